package usbip

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"

	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/stub"
)

// Target is the device a connection's URBs go to: a device enumerated on
// a vusb port (usbhost.Device satisfies it through Adapter).
type Target struct {
	F    *frontend.Frontend
	Port uint8
	Addr uint8 // the address our own enumeration gave it
	// Types is each endpoint's transfer type by address, from the
	// configuration descriptor: USB/IP does not carry it, the ring does.
	Types map[uint8]usbif.PipeType
}

// EndpointTypes reads every endpoint's transfer type out of a
// configuration (all alternate settings).
func EndpointTypes(c usbdesc.Config) map[uint8]usbif.PipeType {
	m := map[uint8]usbif.PipeType{}
	for _, it := range c.Interfaces {
		for _, e := range it.Endpoints {
			switch e.Type() {
			case usbdesc.XferIsoc:
				m[e.Address] = usbif.TypeIsoc
			case usbdesc.XferBulk:
				m[e.Address] = usbif.TypeBulk
			case usbdesc.XferInterrupt:
				m[e.Address] = usbif.TypeIntr
			}
		}
	}
	return m
}

// maxInFlight bounds the URBs one connection may have outstanding: more
// CMD_SUBMITs wait in the socket, so a client cannot make us queue
// without limit.
const maxInFlight = 64

// request is one CMD_SUBMIT being served, maybe in several ring URBs:
// a transfer larger than the ring's 64 KiB is split into chunks, IN
// chunks one after the other (a short one ends the transfer, and the
// next chunk would otherwise catch the device's next answer), OUT chunks
// all at once.
type request struct {
	h        Header
	buf      []byte // the whole transfer
	in       bool
	chunks   []*frontend.URB
	next     int // next chunk to submit (IN)
	pending  int
	actual   int
	status   usbif.Status
	iso      []IsoDesc
	unlinkBy uint32 // seqnum of the CMD_UNLINK that cancelled it, or 0
	done     bool
}

// Serve runs the URB phase for t on conn until the peer closes it or ctx
// ends: CMD_SUBMIT becomes ring URBs, their completions RET_SUBMIT;
// CMD_UNLINK unlinks and answers RET_UNLINK (-ECONNRESET when it caught
// the URB, 0 when it had completed), as Linux's usbip stub does. A
// malformed message ends the connection.
func Serve(ctx context.Context, conn io.ReadWriteCloser, t Target, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Done must hold every URB this connection can have submitted: the
	// frontend delivers completions holding its lock.
	s := &server{t: t, log: log, w: bufio.NewWriterSize(conn, 256<<10), done: make(chan *frontend.URB, maxInFlight*(MaxTransfer/frontend.MaxTransfer+1)),
		reqs: map[uint32]*request{}, room: make(chan struct{}, maxInFlight)}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	errc := make(chan error, 1)
	go func() { errc <- s.read(ctx, bufio.NewReaderSize(conn, 256<<10)) }()
	for {
		select {
		case u := <-s.done:
			if err := s.completed(u); err != nil {
				cancel()
				s.drain()
				return err
			}
		case err := <-errc:
			cancel()
			s.drain()
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
}

type server struct {
	t    Target
	log  *slog.Logger
	w    *bufio.Writer
	wmu  sync.Mutex
	done chan *frontend.URB
	room chan struct{}

	mu   sync.Mutex
	reqs map[uint32]*request // by seqnum, while in flight
}

// read takes commands off the connection.
func (s *server) read(ctx context.Context, r *bufio.Reader) error {
	var hb [HeaderSize]byte
	for {
		if _, err := io.ReadFull(r, hb[:]); err != nil {
			return err
		}
		var h Header
		if err := h.Decode(&hb); err != nil {
			return err
		}
		switch h.Command {
		case CmdSubmit:
			select {
			case s.room <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := s.submit(r, h); err != nil {
				return err
			}
		case CmdUnlink:
			s.unlink(h)
		default:
			return protoErr("command %#x from the client", h.Command)
		}
	}
}

// submit reads a CMD_SUBMIT's payload and starts it.
func (s *server) submit(r io.Reader, h Header) error {
	if h.Direction > DirIn || h.Endpoint > 15 || h.Length < 0 || h.Length > MaxTransfer {
		return protoErr("CMD_SUBMIT seq %d: direction %d endpoint %d length %d", h.Seqnum, h.Direction, h.Endpoint, h.Length)
	}
	iso := h.Packets != -1 && h.Packets != 0
	if iso && (h.Packets < 0 || h.Packets > MaxIsoPackets) {
		return protoErr("CMD_SUBMIT seq %d: %d iso packets", h.Seqnum, h.Packets)
	}
	rq := &request{h: h, buf: make([]byte, h.Length), in: h.Direction == DirIn}
	if !rq.in {
		if _, err := io.ReadFull(r, rq.buf); err != nil {
			return err
		}
	}
	if iso {
		b := make([]byte, int(h.Packets)*IsoDescSize)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		rq.iso = DecodeIso(b, int(h.Packets))
	}
	s.mu.Lock()
	s.reqs[h.Seqnum] = rq
	s.mu.Unlock()
	if st := s.start(rq); st != usbif.StatusOK || len(rq.chunks) == 0 {
		s.mu.Lock()
		rq.status = st
		var m *reply
		if rq.pending == 0 {
			m = s.finishLocked(rq) // refused, or answered here (SET_ADDRESS)
		}
		s.mu.Unlock()
		return m.send(s)
	}
	return nil
}

// start turns a request into ring URBs; a status other than OK fails it
// at once.
func (s *server) start(rq *request) usbif.Status {
	h := &rq.h
	ep := uint8(h.Endpoint)
	if rq.in {
		ep |= 0x80
	}
	mk := func(typ usbif.PipeType, b []byte) *frontend.URB {
		return &frontend.URB{Port: s.t.Port, Addr: s.t.Addr, Endpoint: ep, Type: typ, Buffer: b, Done: s.done, Context: rq,
			ShortNotOK: h.Flags&URBShortNotOK != 0, Interval: int(h.Interval)}
	}
	switch {
	case h.Endpoint == 0:
		sp := usbif.DecodeSetup(&h.Setup)
		if sp.Is(usbif.ReqSetAddress, usbif.RecipientDevice) {
			return usbif.StatusOK // the device has its address already: ours
		}
		if int(sp.Length) != len(rq.buf) || len(rq.buf) > frontend.MaxTransfer {
			return usbif.StatusInval
		}
		u := mk(usbif.TypeCtrl, rq.buf)
		u.Setup = sp
		u.Endpoint &= 0x80
		rq.chunks = []*frontend.URB{u}
	case rq.iso != nil:
		if len(rq.buf) > frontend.MaxTransfer-4096 || len(rq.iso) > frontend.MaxIsoPackets {
			return usbif.StatusInval
		}
		u := mk(usbif.TypeIsoc, rq.buf)
		for _, d := range rq.iso {
			if uint64(d.Offset)+uint64(d.Length) > uint64(len(rq.buf)) {
				return usbif.StatusInval
			}
			u.Packets = append(u.Packets, stub.IsoPacket{Offset: int(d.Offset), Length: int(d.Length)})
		}
		rq.chunks = []*frontend.URB{u}
	default:
		typ, ok := s.t.Types[ep]
		if !ok {
			typ = usbif.TypeBulk
			if h.Interval > 0 {
				typ = usbif.TypeIntr // an endpoint the descriptors do not name: vhci gives interrupt URBs an interval
			}
		}
		if typ == usbif.TypeIsoc {
			return usbif.StatusInval // isochronous without packets
		}
		for off := 0; off == 0 || off < len(rq.buf); off += frontend.MaxTransfer {
			rq.chunks = append(rq.chunks, mk(typ, rq.buf[off:min(off+frontend.MaxTransfer, len(rq.buf))]))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(rq.chunks)
	if rq.in {
		n = 1 // IN chunks go one at a time
	}
	for ; rq.next < n; rq.next++ {
		if err := s.t.F.Submit(rq.chunks[rq.next]); err != nil {
			return usbif.StatusShutdown
		}
		rq.pending++
	}
	return usbif.StatusOK
}

// completed applies one ring URB's result to its request.
func (s *server) completed(u *frontend.URB) error {
	s.mu.Lock()
	m := s.completedLocked(u)
	s.mu.Unlock()
	return m.send(s)
}

func (s *server) completedLocked(u *frontend.URB) *reply {
	rq := u.Context.(*request)
	rq.pending--
	rq.actual += u.Actual
	if u.Status != usbif.StatusOK && rq.status == usbif.StatusOK {
		rq.status = u.Status
	}
	if rq.iso != nil {
		for i, p := range u.Packets {
			rq.iso[i].Actual, rq.iso[i].Status = uint32(p.Actual), int32(p.Status)
		}
		rq.h.StartFrame, rq.h.ErrorCount = int32(u.StartFrame), int32(u.ErrorCount)
	}
	// IN: the next chunk, unless this one was short, failed or unlinked.
	if rq.in && rq.next < len(rq.chunks) && u.Status == usbif.StatusOK && u.Actual == len(u.Buffer) && rq.unlinkBy == 0 {
		if err := s.t.F.Submit(rq.chunks[rq.next]); err == nil {
			rq.next++
			rq.pending++
			return nil
		}
		rq.status = usbif.StatusShutdown
	}
	if rq.pending > 0 {
		return nil
	}
	return s.finishLocked(rq)
}

// reply is a message to send once the lock is dropped: a slow client
// must not hold up the reader.
type reply struct {
	h       Header
	payload []byte
}

func (m *reply) send(s *server) error {
	if m == nil {
		return nil
	}
	return s.send(m.h, m.payload)
}

// finishLocked makes a request's answer: RET_SUBMIT, or RET_UNLINK if it
// was unlinked meanwhile.
func (s *server) finishLocked(rq *request) *reply {
	if rq.done {
		return nil
	}
	rq.done = true
	delete(s.reqs, rq.h.Seqnum)
	<-s.room
	if rq.unlinkBy != 0 {
		return &reply{h: Header{Command: RetUnlink, Seqnum: rq.unlinkBy, Status: -104}} // ECONNRESET
	}
	h := Header{Command: RetSubmit, Seqnum: rq.h.Seqnum, Status: int32(rq.status), Length: int32(rq.actual),
		StartFrame: rq.h.StartFrame, Packets: rq.h.Packets, ErrorCount: rq.h.ErrorCount}
	if rq.iso == nil {
		h.Packets = 0
		if rq.h.Packets == -1 {
			h.Packets = -1
		}
	}
	var payload []byte
	if rq.in {
		if rq.iso != nil {
			// IN iso data goes packed: each packet's actual bytes, in order.
			for _, d := range rq.iso {
				payload = append(payload, rq.buf[d.Offset:d.Offset+d.Actual]...)
			}
			h.Length = int32(len(payload))
		} else {
			payload = rq.buf[:rq.actual]
		}
	}
	if rq.iso != nil {
		payload = EncodeIso(payload, rq.iso)
	}
	return &reply{h: h, payload: payload}
}

// unlink handles CMD_UNLINK.
func (s *server) unlink(h Header) {
	s.mu.Lock()
	rq := s.reqs[h.UnlinkSeq]
	if rq == nil || rq.done {
		s.mu.Unlock()
		_ = s.send(Header{Command: RetUnlink, Seqnum: h.Seqnum, Status: 0}, nil) // it completed already
		return
	}
	rq.unlinkBy = h.Seqnum
	us := append([]*frontend.URB(nil), rq.chunks[:rq.next]...)
	s.mu.Unlock()
	for _, u := range us {
		s.t.F.Unlink(u)
	}
}

// send writes one reply and flushes it.
func (s *server) send(h Header, payload []byte) error {
	var b [HeaderSize]byte
	h.Encode(&b)
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if _, err := s.w.Write(b[:]); err != nil {
		return err
	}
	if _, err := s.w.Write(payload); err != nil {
		return err
	}
	return s.w.Flush()
}

// drain unlinks what is still in flight and waits for it, so no URB of
// this connection outlives it.
func (s *server) drain() {
	s.mu.Lock()
	var us []*frontend.URB
	n := 0
	for _, rq := range s.reqs {
		us = append(us, rq.chunks[:rq.next]...)
		n += rq.pending
	}
	s.mu.Unlock()
	for _, u := range us {
		s.t.F.Unlink(u)
	}
	for ; n > 0; n-- {
		<-s.done
	}
}

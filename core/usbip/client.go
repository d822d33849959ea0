package usbip

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Devlist asks a server for its devices (OP_REQ_DEVLIST).
func Devlist(c net.Conn) ([]Device, error) {
	if _, err := c.Write(OpHeader{Version: Version, Code: OpReqDevlist}.Encode()); err != nil {
		return nil, err
	}
	h, err := ReadOpHeader(c)
	if err != nil {
		return nil, err
	}
	if h.Code != OpRepDevlist || h.Status != StOK {
		return nil, protoErr("devlist reply code %#x status %d", h.Code, h.Status)
	}
	var nb [4]byte
	if _, err := io.ReadFull(c, nb[:]); err != nil {
		return nil, err
	}
	n := be.Uint32(nb[:])
	if n > 1024 {
		return nil, protoErr("%d devices", n)
	}
	out := make([]Device, 0, n)
	for i := uint32(0); i < n; i++ {
		b := make([]byte, DeviceSize)
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, err
		}
		d, nif, err := DecodeDevice(b)
		if err != nil {
			return nil, err
		}
		ib := make([]byte, nif*InterfaceSize)
		if _, err := io.ReadFull(c, ib); err != nil {
			return nil, err
		}
		for k := 0; k < nif; k++ {
			d.Interfaces = append(d.Interfaces, Interface{ib[k*4], ib[k*4+1], ib[k*4+2]})
		}
		out = append(out, d)
	}
	return out, nil
}

// Import asks for a device (OP_REQ_IMPORT); on success the connection
// carries its URBs (NewConn).
func Import(c net.Conn, busid string) (Device, error) {
	b := OpHeader{Version: Version, Code: OpReqImport}.Encode()
	var name [BusidSize]byte
	copy(name[:BusidSize-1], busid)
	if _, err := c.Write(append(b, name[:]...)); err != nil {
		return Device{}, err
	}
	h, err := ReadOpHeader(c)
	if err != nil {
		return Device{}, err
	}
	if h.Code != OpRepImport {
		return Device{}, protoErr("import reply code %#x", h.Code)
	}
	if h.Status != StOK {
		return Device{}, fmt.Errorf("usbip: import %s refused: status %d", busid, h.Status)
	}
	db := make([]byte, DeviceSize)
	if _, err := io.ReadFull(c, db); err != nil {
		return Device{}, err
	}
	d, _, err := DecodeDevice(db)
	return d, err
}

// Result is a completed CMD_SUBMIT.
type Result struct {
	Seqnum   uint32
	Status   int32 // 0 or -errno
	Data     []byte
	Actual   int
	Iso      []IsoDesc
	Unlinked bool // a RET_UNLINK with -ECONNRESET answered it instead
}

// Conn is the client side of the URB phase: many submits in flight,
// matched by seqnum. Safe for concurrent use.
type Conn struct {
	c     net.Conn
	devid uint32
	wmu   sync.Mutex
	w     *bufio.Writer

	mu      sync.Mutex
	seq     uint32
	pending map[uint32]chan *Result
	in      map[uint32]bool   // IN submits: their RET_SUBMIT carries data
	unlinks map[uint32]uint32 // CMD_UNLINK seqnum -> target seqnum
	err     error
}

// NewConn starts reading replies on an imported connection.
func NewConn(c net.Conn, d Device) *Conn {
	k := &Conn{c: c, devid: d.DevID(), w: bufio.NewWriterSize(c, 256<<10), pending: map[uint32]chan *Result{}, in: map[uint32]bool{}, unlinks: map[uint32]uint32{}}
	go k.read()
	return k
}

// ErrConnClosed: the connection ended with submits in flight.
var ErrConnClosed = errors.New("usbip: connection closed")

func (k *Conn) read() {
	r := bufio.NewReaderSize(k.c, 256<<10)
	var hb [HeaderSize]byte
	var err error
	for {
		if _, err = io.ReadFull(r, hb[:]); err != nil {
			break
		}
		var h Header
		if err = h.Decode(&hb); err != nil {
			break
		}
		switch h.Command {
		case RetSubmit:
			k.mu.Lock()
			ch, in := k.pending[h.Seqnum], k.in[h.Seqnum]
			delete(k.pending, h.Seqnum)
			delete(k.in, h.Seqnum)
			k.mu.Unlock()
			res := &Result{Seqnum: h.Seqnum, Status: h.Status, Actual: int(h.Length)}
			if h.Length < 0 || h.Length > MaxTransfer || h.Packets > MaxIsoPackets {
				err = protoErr("RET_SUBMIT length %d packets %d", h.Length, h.Packets)
				break
			}
			if in { // only IN replies carry data (vhci_rx)
				res.Data = make([]byte, h.Length)
				if _, err = io.ReadFull(r, res.Data); err != nil {
					break
				}
			}
			if h.Packets > 0 {
				ib := make([]byte, int(h.Packets)*IsoDescSize)
				if _, err = io.ReadFull(r, ib); err != nil {
					break
				}
				res.Iso = DecodeIso(ib, int(h.Packets))
			}
			if ch != nil {
				ch <- res
			}
		case RetUnlink:
			k.mu.Lock()
			target, ok := k.unlinks[h.Seqnum]
			delete(k.unlinks, h.Seqnum)
			ch := k.pending[target]
			if ok && h.Status != 0 && ch != nil {
				delete(k.pending, target)
			} else {
				ch = nil
			}
			k.mu.Unlock()
			if ch != nil {
				ch <- &Result{Seqnum: target, Status: h.Status, Unlinked: true}
			}
		default:
			err = protoErr("command %#x from the server", h.Command)
		}
		if err != nil {
			break
		}
	}
	k.mu.Lock()
	k.err = errors.Join(ErrConnClosed, err)
	for s, ch := range k.pending {
		ch <- &Result{Seqnum: s, Status: -108}
		delete(k.pending, s)
	}
	k.mu.Unlock()
}

// Submit sends a CMD_SUBMIT and returns its seqnum and where its result
// comes. dir is DirIn or DirOut; out is the OUT data (or nil); inLen the
// room asked for IN; iso the packets (nil: not isochronous).
func (k *Conn) Submit(dir, ep uint32, setup [8]byte, flags uint32, interval int32, out []byte, inLen int, iso []IsoDesc) (uint32, <-chan *Result, error) {
	ch := make(chan *Result, 1)
	k.mu.Lock()
	if k.err != nil {
		k.mu.Unlock()
		return 0, nil, k.err
	}
	k.seq++
	seq := k.seq
	k.pending[seq] = ch
	k.in[seq] = dir == DirIn
	k.mu.Unlock()
	h := Header{Command: CmdSubmit, Seqnum: seq, DevID: k.devid, Direction: dir, Endpoint: ep, Flags: flags,
		Length: int32(len(out)), Packets: -1, Interval: interval, Setup: setup}
	if dir == DirIn {
		h.Length = int32(inLen)
		h.Flags |= URBDirIn
	}
	if iso != nil {
		h.Packets = int32(len(iso))
	}
	var hb [HeaderSize]byte
	h.Encode(&hb)
	k.wmu.Lock()
	defer k.wmu.Unlock()
	k.w.Write(hb[:])
	if dir == DirOut {
		k.w.Write(out)
	}
	if iso != nil {
		k.w.Write(EncodeIso(nil, iso))
	}
	if err := k.w.Flush(); err != nil {
		return 0, nil, err
	}
	return seq, ch, nil
}

// Unlink sends a CMD_UNLINK for seq.
func (k *Conn) Unlink(seq uint32) error {
	k.mu.Lock()
	k.seq++
	us := k.seq
	k.unlinks[us] = seq
	k.mu.Unlock()
	var hb [HeaderSize]byte
	(&Header{Command: CmdUnlink, Seqnum: us, DevID: k.devid, UnlinkSeq: seq}).Encode(&hb)
	k.wmu.Lock()
	defer k.wmu.Unlock()
	k.w.Write(hb[:])
	return k.w.Flush()
}

// Do is a synchronous Submit.
func (k *Conn) Do(dir, ep uint32, setup [8]byte, out []byte, inLen int) (*Result, error) {
	_, ch, err := k.Submit(dir, ep, setup, 0, 0, out, inLen, nil)
	if err != nil {
		return nil, err
	}
	return <-ch, nil
}

// Close ends the connection.
func (k *Conn) Close() error { return k.c.Close() }

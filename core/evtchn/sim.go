package evtchn

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/sim"
)

// Sim is Channels on the simulated hypervisor. Each port is an eventfd
// the peer writes to notify it. A reader per port turns a notification
// into a fired port and then stops reading until Unmask: notifications
// meanwhile accumulate in the eventfd's counter, so they are latched, not
// lost, exactly Xen's masking rule.
type Sim struct {
	d *sim.Domain

	mu     sync.Mutex
	ports  map[Port]*simPort
	fired  []Port
	wake   chan struct{}
	closed bool
}

type simPort struct {
	id       Port
	remote   uint32
	own      *os.File // our eventfd, non-blocking, on the netpoller
	peer     int      // the peer's eventfd, -1 until known
	peerGone bool
	masked   bool // fired and not yet unmasked; guarded by Sim.mu
	unmask   chan struct{}
}

// NewSim returns Channels of domain d.
func NewSim(d *sim.Domain) *Sim {
	s := &Sim{d: d, ports: map[Port]*simPort{}, wake: make(chan struct{}, 1)}
	d.OnPeerClosed(func(p uint32) {
		s.mu.Lock()
		if sp := s.ports[Port(p)]; sp != nil {
			sp.peerGone = true
			if sp.peer >= 0 {
				unix.Close(sp.peer)
				sp.peer = -1
			}
		}
		s.mu.Unlock()
	})
	return s
}

func (s *Sim) add(p Port, remote uint32, own, peer int) Port {
	sp := &simPort{id: p, remote: remote, own: os.NewFile(uintptr(own), "evtchn"), peer: peer, unmask: make(chan struct{}, 1)}
	s.mu.Lock()
	s.ports[p] = sp
	s.mu.Unlock()
	go s.reader(sp)
	return p
}

func (s *Sim) reader(sp *simPort) {
	var b [8]byte
	for {
		if _, err := sp.own.Read(b[:]); err != nil {
			return // closed by Unbind or Close
		}
		s.mu.Lock()
		s.fired = append(s.fired, sp.id)
		sp.masked = true
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
		if _, ok := <-sp.unmask; !ok {
			return
		}
	}
}

func simError(op string, dom uint32, p Port, err error) error {
	switch {
	case errors.Is(err, sim.ErrNotBound):
		err = errors.Join(ErrNotBound, err)
	case errors.Is(err, sim.ErrPeerGone):
		err = errors.Join(ErrPeerGone, err)
	}
	return &OpError{Op: op, Dom: dom, Port: p, Err: err}
}

// BindInterdomain binds to remote's port.
func (s *Sim) BindInterdomain(remote uint32, remotePort Port) (Port, error) {
	p, own, peer, err := s.d.BindInterdomain(remote, uint32(remotePort))
	if err != nil {
		return 0, simError("bind interdomain", remote, remotePort, err)
	}
	return s.add(Port(p), remote, own, peer), nil
}

// BindUnbound allocates a port remote may bind.
func (s *Sim) BindUnbound(remote uint32) (Port, error) {
	p, own, err := s.d.BindUnbound(remote)
	if err != nil {
		return 0, simError("bind unbound", remote, 0, err)
	}
	return s.add(Port(p), remote, own, -1), nil
}

// Unbind closes a port.
func (s *Sim) Unbind(p Port) error {
	s.mu.Lock()
	sp := s.ports[p]
	delete(s.ports, p)
	s.mu.Unlock()
	if sp == nil {
		return &OpError{Op: "unbind", Port: p, Err: ErrNotBound}
	}
	s.closePort(sp)
	if err := s.d.Unbind(uint32(p)); err != nil {
		return simError("unbind", sp.remote, p, err)
	}
	return nil
}

func (s *Sim) closePort(sp *simPort) {
	sp.own.Close()
	close(sp.unmask)
	if sp.peer >= 0 {
		unix.Close(sp.peer)
	}
}

var one = binary.LittleEndian.AppendUint64(nil, 1)

// Notify signals the peer: one write to its eventfd. The first notify of
// a port we allocated unbound asks the hypervisor for the peer's eventfd.
func (s *Sim) Notify(p Port) error {
	s.mu.Lock()
	sp := s.ports[p]
	if sp == nil {
		s.mu.Unlock()
		return &OpError{Op: "notify", Port: p, Err: ErrNotBound}
	}
	if sp.peerGone {
		s.mu.Unlock()
		return &OpError{Op: "notify", Dom: sp.remote, Port: p, Err: ErrPeerGone}
	}
	peer := sp.peer
	s.mu.Unlock()
	if peer < 0 {
		fd, err := s.d.PeerFD(uint32(p))
		if err != nil {
			if errors.Is(err, sim.ErrPeerGone) {
				return nil // nobody bound yet: Xen drops the event too
			}
			return simError("notify", sp.remote, p, err)
		}
		s.mu.Lock()
		if sp.peer < 0 && !sp.peerGone {
			sp.peer = fd
		} else {
			unix.Close(fd)
		}
		peer = sp.peer
		s.mu.Unlock()
		if peer < 0 {
			return &OpError{Op: "notify", Dom: sp.remote, Port: p, Err: ErrPeerGone}
		}
	}
	if _, err := unix.Write(peer, one); err != nil && err != unix.EAGAIN {
		return &OpError{Op: "notify", Dom: sp.remote, Port: p, Err: err}
	}
	return nil
}

// Wait returns the next fired port.
func (s *Sim) Wait(ctx context.Context) (Port, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return 0, ErrClosed
		}
		if len(s.fired) > 0 {
			p := s.fired[0]
			s.fired = s.fired[1:]
			s.mu.Unlock()
			return p, nil
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Unmask re-enables a fired port.
func (s *Sim) Unmask(p Port) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.ports[p]
	if sp == nil {
		return &OpError{Op: "unmask", Port: p, Err: ErrNotBound}
	}
	if sp.masked { // unmasking an unmasked port does nothing, as on Xen
		sp.masked = false
		sp.unmask <- struct{}{} // buffered 1; at most one outstanding while masked
	}
	return nil
}

// Close unbinds every port and wakes Wait.
func (s *Sim) Close() error {
	s.mu.Lock()
	ports := s.ports
	s.ports = map[Port]*simPort{}
	s.closed = true
	s.mu.Unlock()
	for p, sp := range ports {
		s.closePort(sp)
		_ = s.d.Unbind(uint32(p))
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

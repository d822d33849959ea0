// Package fronttest is a test frontend for the backend: it builds
// requests the way Linux xen-hcd does (per-page segments at odd offsets,
// ids below 16 from a free list, SET_ADDRESS to address 0, 512 conn
// credits pre-posted) and can be told to lie. Mem is an in-process
// hypervisor for it: grants are pages of Go memory the front and the back
// share, so what crosses is the real wire format.
package fronttest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
)

// Mem is an in-process grant table and event channel pair. Safe for
// concurrent use.
type Mem struct {
	mu    sync.Mutex
	pages map[grant.Ref]*memPage
	next  grant.Ref
	// Mapped counts live Map mappings: a leak check for tests.
	Mapped int
	sides  [2]*memEvents
}

type memPage struct {
	b        []byte // this page
	run      []byte // the whole allocation it came from
	first    grant.Ref
	writable bool
	grantee  uint32
	mapped   int
	ended    bool
}

// NewMem returns an empty in-process hypervisor.
func NewMem() *Mem {
	m := &Mem{pages: map[grant.Ref]*memPage{}, next: 8}
	m.sides[0] = &memEvents{m: m, fire: make(chan evtchn.Port, 1)}
	m.sides[1] = &memEvents{m: m, fire: make(chan evtchn.Port, 1)}
	m.sides[0].peer, m.sides[1].peer = m.sides[1], m.sides[0]
	return m
}

// Granter is the frontend's view.
func (m *Mem) Granter() grant.Granter { return memGranter{m} }

// Mapper is the backend's view.
func (m *Mem) Mapper() grant.Mapper { return memMapper{m} }

// FrontEvents and BackEvents are the two ends of one event channel.
func (m *Mem) FrontEvents() evtchn.Channels { return m.sides[0] }

// BackEvents is the backend's end.
func (m *Mem) BackEvents() evtchn.Channels { return m.sides[1] }

type memGranter struct{ m *Mem }

func (g memGranter) Grant(dom uint32, count int, writable bool) (grant.Grant, error) {
	g.m.mu.Lock()
	defer g.m.mu.Unlock()
	run := make([]byte, count*grant.PageSize)
	gr := &memGrant{m: g.m, b: run}
	first := g.m.next
	for i := 0; i < count; i++ {
		ref := g.m.next
		g.m.next++
		g.m.pages[ref] = &memPage{b: run[i*grant.PageSize : (i+1)*grant.PageSize], run: run, first: first, writable: writable, grantee: dom}
		gr.refs = append(gr.refs, ref)
	}
	return gr, nil
}

func (memGranter) Close() error { return nil }

type memGrant struct {
	m    *Mem
	b    []byte
	refs []grant.Ref
}

func (g *memGrant) Refs() []grant.Ref { return g.refs }
func (g *memGrant) Bytes() []byte     { return g.b }

// End revokes like gnttab_end_foreign_access: refused while mapped.
func (g *memGrant) End() error {
	g.m.mu.Lock()
	defer g.m.mu.Unlock()
	for _, r := range g.refs {
		if p := g.m.pages[r]; p != nil && p.mapped > 0 {
			return &grant.OpError{Op: "end", Ref: r, Err: grant.ErrBusy}
		}
	}
	for _, r := range g.refs {
		delete(g.m.pages, r)
	}
	return nil
}

type memMapper struct{ m *Mem }

func (mm memMapper) Map(dom uint32, refs []grant.Ref, writable bool) (grant.Mapping, error) {
	m := mm.m
	m.mu.Lock()
	defer m.mu.Unlock()
	var run []byte
	var first grant.Ref
	for i, r := range refs {
		p := m.pages[r]
		switch {
		case p == nil || p.ended:
			return nil, &grant.OpError{Op: "map", Dom: dom, Ref: r, Err: grant.StatusBadGntref}
		case writable && !p.writable:
			return nil, &grant.OpError{Op: "map", Dom: dom, Ref: r, Err: grant.ErrReadOnly}
		case i == 0:
			run, first = p.run, p.first
		case p.first != first || r != refs[0]+grant.Ref(i):
			return nil, &grant.OpError{Op: "map", Dom: dom, Ref: r, Err: errors.New("fronttest: Map needs refs of one grant, in order")}
		}
	}
	for _, r := range refs {
		m.pages[r].mapped++
	}
	m.Mapped++
	off := int(refs[0]-first) * grant.PageSize
	return &memMapping{m: m, refs: append([]grant.Ref(nil), refs...), b: run[off : off+len(refs)*grant.PageSize]}, nil
}

// Copy checks each grant and copies; a bad ref or a write into a
// read-only grant fails that segment, as GNTTABOP_copy does.
func (mm memMapper) Copy(segs []grant.CopySegment) error {
	m := mm.m
	m.mu.Lock()
	defer m.mu.Unlock()
	var first error
	for i := range segs {
		s := &segs[i]
		p := m.pages[s.Ref]
		switch {
		case p == nil || p.ended:
			s.Status = grant.StatusBadGntref
		case s.ToGrant && !p.writable:
			s.Status = grant.StatusPermissionDenied
		case int(s.Offset)+len(s.Local) > grant.PageSize:
			s.Status = grant.StatusBadCopyArg
		default:
			s.Status = grant.StatusOkay
			if s.ToGrant {
				copy(p.b[s.Offset:], s.Local)
			} else {
				copy(s.Local, p.b[s.Offset:])
			}
		}
		if s.Status != grant.StatusOkay && first == nil {
			first = &grant.OpError{Op: "copy", Dom: s.Dom, Ref: s.Ref, Err: s.Status}
		}
	}
	return first
}

func (memMapper) Close() error { return nil }

type memMapping struct {
	m    *Mem
	refs []grant.Ref
	b    []byte
	done bool
}

func (x *memMapping) Bytes() []byte { return x.b }
func (x *memMapping) Unmap() error {
	x.m.mu.Lock()
	defer x.m.mu.Unlock()
	if x.done {
		return nil
	}
	x.done = true
	x.m.Mapped--
	for _, r := range x.refs {
		if p := x.m.pages[r]; p != nil {
			p.mapped--
		}
	}
	return nil
}

// memEvents is one end of an event channel with Xen's rules: a
// notification while one is pending coalesces (the pending bit), and a
// port that fired stays masked until Unmask, notifications meanwhile
// latched and delivered on unmask.
type memEvents struct {
	m       *Mem
	peer    *memEvents
	fire    chan evtchn.Port
	port    evtchn.Port
	masked  bool // fired, not yet unmasked; guarded by m.mu
	latched bool // notified while masked; guarded by m.mu
	// Notified counts notifications sent.
	Notified int
}

func (e *memEvents) BindUnbound(uint32) (evtchn.Port, error) { e.port = 1; return 1, nil }
func (e *memEvents) BindInterdomain(_ uint32, p evtchn.Port) (evtchn.Port, error) {
	if p != 1 {
		return 0, fmt.Errorf("fronttest: no unbound port %d", p)
	}
	e.port = 2
	return 2, nil
}
func (e *memEvents) Unbind(evtchn.Port) error { return nil }
func (e *memEvents) Notify(evtchn.Port) error {
	e.m.mu.Lock()
	e.Notified++
	p := e.peer
	if p.masked {
		p.latched = true
		e.m.mu.Unlock()
		return nil
	}
	e.m.mu.Unlock()
	select {
	case p.fire <- p.port:
	default:
	}
	return nil
}
func (e *memEvents) Wait(ctx context.Context) (evtchn.Port, error) {
	select {
	case p := <-e.fire:
		e.m.mu.Lock()
		e.masked = true
		e.m.mu.Unlock()
		return p, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
func (e *memEvents) Unmask(evtchn.Port) error {
	e.m.mu.Lock()
	fire := e.masked && e.latched
	e.masked, e.latched = false, false
	e.m.mu.Unlock()
	if fire {
		select {
		case e.fire <- e.port:
		default:
		}
	}
	return nil
}
func (e *memEvents) Close() error { return nil }

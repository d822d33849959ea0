package grant

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/sim"
)

// SimMapper maps grants through the simulated hypervisor: the hypervisor
// checks each grant entry and hands over the granter's RAM descriptor
// (read-only for a read-only map); we mmap exactly the granted frames,
// side by side in one reserved range.
type SimMapper struct{ d *sim.Domain }

// NewSimMapper maps grants as domain d.
func NewSimMapper(d *sim.Domain) *SimMapper { return &SimMapper{d: d} }

func simErr(op string, dom uint32, ref Ref, err error, writable bool) error {
	if writable && errors.Is(err, sim.ErrPermission) {
		err = errors.Join(ErrReadOnly, err)
	}
	return &OpError{Op: op, Dom: dom, Ref: ref, Err: err}
}

// Map maps refs of dom in one batch.
func (m *SimMapper) Map(dom uint32, refs []Ref, writable bool) (Mapping, error) {
	if err := checkBatch("map", dom, len(refs)); err != nil {
		return nil, err
	}
	raw := make([]uint32, len(refs))
	for i, r := range refs {
		raw[i] = uint32(r)
	}
	frames, handle, fd, err := m.d.MapGrants(dom, raw, writable)
	if err != nil {
		return nil, simErr("map", dom, refs[0], err, writable)
	}
	defer unix.Close(fd)
	b, err := mapFrames(fd, frames, writable)
	if err != nil {
		_ = m.d.UnmapGrants(handle)
		return nil, &OpError{Op: "map", Dom: dom, Ref: refs[0], Err: err}
	}
	return &simMapping{m: m, b: b, handle: handle, dom: dom, ref: refs[0]}, nil
}

type simMapping struct {
	m      *SimMapper
	b      []byte
	handle uint64
	dom    uint32
	ref    Ref
	once   sync.Once
	err    error
}

func (s *simMapping) Bytes() []byte { return s.b }

// Unmap unmaps our view first, then tells the hypervisor, so the granter
// can end access only when nothing here can still touch the page.
func (s *simMapping) Unmap() error {
	s.once.Do(func() {
		if err := unix.Munmap(s.b); err != nil {
			s.err = &OpError{Op: "unmap", Dom: s.dom, Ref: s.ref, Err: err}
			return
		}
		if err := s.m.d.UnmapGrants(s.handle); err != nil {
			s.err = &OpError{Op: "unmap", Dom: s.dom, Ref: s.ref, Err: err}
		}
	})
	return s.err
}

// Copy maps each segment's grant, copies, and unmaps: grant copy as a
// sequence of checked one-page mappings.
func (m *SimMapper) Copy(segs []CopySegment) error {
	if len(segs) > MaxBatch {
		return checkBatch("copy", segs[0].Dom, len(segs))
	}
	var first error
	for i := range segs {
		s := &segs[i]
		if len(s.Local) > PageSize || int(s.Offset)+len(s.Local) > PageSize {
			s.Status = StatusBadCopyArg
		} else if mp, err := m.Map(s.Dom, []Ref{s.Ref}, s.ToGrant); err != nil {
			s.Status = statusOf(err)
		} else {
			page := mp.Bytes()[s.Offset:]
			if s.ToGrant {
				copy(page, s.Local)
			} else {
				copy(s.Local, page)
			}
			s.Status = StatusOkay
			if err := mp.Unmap(); err != nil {
				s.Status = StatusGeneralError
			}
		}
		if s.Status != StatusOkay && first == nil {
			first = &OpError{Op: "copy", Dom: s.Dom, Ref: s.Ref, Err: s.Status}
		}
	}
	return first
}

func statusOf(err error) Status {
	switch {
	case errors.Is(err, sim.ErrPermission):
		return StatusPermissionDenied
	case errors.Is(err, sim.ErrBadGntref):
		return StatusBadGntref
	case errors.Is(err, sim.ErrBadDomain):
		return StatusBadDomain
	}
	return StatusGeneralError
}

// Close does nothing: mappings belong to the domain's connection.
func (m *SimMapper) Close() error { return nil }

// SimGranter grants pages of the domain's simulated RAM.
type SimGranter struct{ d *sim.Domain }

// NewSimGranter grants as domain d.
func NewSimGranter(d *sim.Domain) *SimGranter { return &SimGranter{d: d} }

// Grant allocates count zeroed contiguous pages and grants each to dom.
func (g *SimGranter) Grant(dom uint32, count int, writable bool) (Grant, error) {
	if count <= 0 || count > MaxBatch {
		return nil, checkBatch("grant", dom, count)
	}
	frame, err := g.d.AllocFrames(count)
	if err != nil {
		return nil, &OpError{Op: "grant", Dom: dom, Err: err}
	}
	sg := &simGrant{g: g, dom: dom, frame: frame, b: g.d.RAM()[int(frame)*PageSize : (int(frame)+count)*PageSize]}
	for i := 0; i < count; i++ {
		ref, err := g.d.GrantAccess(dom, frame+uint32(i), writable)
		if err != nil {
			sg.End()
			return nil, &OpError{Op: "grant", Dom: dom, Err: err}
		}
		sg.refs = append(sg.refs, Ref(ref))
	}
	return sg, nil
}

// Close does nothing.
func (g *SimGranter) Close() error { return nil }

type simGrant struct {
	g     *SimGranter
	dom   uint32
	frame uint32
	b     []byte
	refs  []Ref
	ended int // refs[:ended] are revoked
}

func (s *simGrant) Refs() []Ref   { return s.refs }
func (s *simGrant) Bytes() []byte { return s.b }

// End revokes each grant; a page the grantee still maps stops it with
// ErrBusy (call End again after the grantee unmapped). The pages are
// freed once every grant is revoked.
func (s *simGrant) End() error {
	for ; s.ended < len(s.refs); s.ended++ {
		if err := s.g.d.EndAccess(uint32(s.refs[s.ended])); err != nil {
			if errors.Is(err, sim.ErrStillMapped) {
				err = ErrBusy
			}
			return &OpError{Op: "end", Dom: s.dom, Ref: s.refs[s.ended], Err: err}
		}
	}
	if s.b != nil {
		s.g.d.FreeFrames(s.frame, len(s.b)/PageSize)
		s.b = nil
	}
	return nil
}

package grant

import (
	"errors"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/core/sim"
)

// SimMapper maps grants through the simulated hypervisor: the hypervisor
// checks each grant entry and hands over the granter's RAM descriptor
// (read-only for a read-only map); Map mmaps exactly the granted frames,
// side by side in one reserved range.
//
// Copy is the data path. In dom0 it runs as Xen's GNTTABOP_copy does, in
// the caller: each segment's grant is checked and pinned in the granter's
// shared grant table (sim.Pin: the same entries and active counts the
// hypervisor's maps use), the bytes copied, the grant unpinned; no round
// trip. The granter cannot end access mid-copy, as on Xen. Elsewhere (a
// driver domain) it asks the hypervisor: one checked map request per
// direction, copies through a cached view of the granter's RAM, one
// unmap. Either way this process can reach all of the granter's RAM:
// acceptable for a simulator of a privileged backend; Xen checks every
// page in the hypervisor.
type SimMapper struct {
	d *sim.Domain

	mu    sync.Mutex
	views map[viewKey]*ramView

	tmu    sync.RWMutex
	tables map[uint32]*simTable // dom0: granters' tables, until they leave
	local  bool                 // false once the hypervisor refused us the tables
}

// simTable is a granter's RAM and grant table, mapped for local copies.
type simTable struct {
	ram, gt  []byte
	ramPages int
}

type viewKey struct {
	dom      uint32
	writable bool
}

type ramView struct {
	gen uint64
	b   []byte
}

// NewSimMapper maps grants as domain d.
func NewSimMapper(d *sim.Domain) *SimMapper {
	m := &SimMapper{d: d, views: map[viewKey]*ramView{}, tables: map[uint32]*simTable{}, local: d.ID == 0}
	d.OnDomainLeft(m.forget)
	return m
}

// forget drops a granter's tables when it leaves: a domid that joins
// again is a new domain with new memory.
func (m *SimMapper) forget(dom uint32) {
	m.tmu.Lock()
	defer m.tmu.Unlock()
	if t := m.tables[dom]; t != nil {
		unix.Munmap(t.ram)
		unix.Munmap(t.gt)
		delete(m.tables, dom)
	}
}

// table returns dom's tables with m.tmu read-locked (the caller unlocks),
// fetching them once.
func (m *SimMapper) table(dom uint32) (*simTable, error) {
	m.tmu.RLock()
	if t := m.tables[dom]; t != nil {
		return t, nil
	}
	m.tmu.RUnlock()
	ramFD, gtFD, _, err := m.d.GrantTable(dom)
	if err != nil {
		m.tmu.RLock()
		return nil, err
	}
	defer unix.Close(ramFD)
	defer unix.Close(gtFD)
	var st unix.Stat_t
	if err := unix.Fstat(ramFD, &st); err != nil {
		m.tmu.RLock()
		return nil, err
	}
	t := &simTable{ramPages: int(st.Size / PageSize)}
	if t.ram, err = unix.Mmap(ramFD, 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		if t.gt, err = unix.Mmap(gtFD, 0, sim.TablePages*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
			unix.Munmap(t.ram)
		}
	}
	if err != nil {
		m.tmu.RLock()
		return nil, err
	}
	m.tmu.Lock()
	if old := m.tables[dom]; old != nil {
		unix.Munmap(t.ram)
		unix.Munmap(t.gt)
		t = old
	} else {
		m.tables[dom] = t
	}
	m.tmu.Unlock()
	m.tmu.RLock()
	if m.tables[dom] != t { // it left meanwhile
		return nil, sim.ErrBadDomain
	}
	return t, nil
}

// copyLocal is Copy in dom0: pin, copy, unpin, per segment.
func (m *SimMapper) copyLocal(segs []CopySegment) error {
	var first error
	for i := range segs {
		s := &segs[i]
		if len(s.Local) > PageSize || int(s.Offset)+len(s.Local) > PageSize {
			s.Status = StatusBadCopyArg
		} else {
			s.Status = m.copyPinned(s)
		}
		if s.Status != StatusOkay && first == nil {
			first = &OpError{Op: "copy", Dom: s.Dom, Ref: s.Ref, Err: s.Status}
		}
	}
	return first
}

func (m *SimMapper) copyPinned(s *CopySegment) Status {
	t, err := m.table(s.Dom)
	defer m.tmu.RUnlock()
	if err != nil {
		return statusOf(err)
	}
	frame, err := sim.Pin(t.gt, t.ramPages, uint32(s.Ref), m.d.ID, s.ToGrant)
	if err != nil {
		return statusOf(err)
	}
	page := t.ram[int(frame)*PageSize+int(s.Offset):]
	if s.ToGrant {
		copy(page, s.Local)
	} else {
		copy(s.Local, page)
	}
	sim.Unpin(t.gt, uint32(s.Ref), s.ToGrant)
	return StatusOkay
}

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
	mp, err := m.d.MapGrants(dom, raw, writable)
	if err != nil {
		return nil, simErr("map", dom, refs[0], err, writable)
	}
	defer unix.Close(mp.RAMFD)
	b, err := mapFrames(mp.RAMFD, mp.Frames, writable)
	if err != nil {
		_ = m.d.UnmapGrants(mp.Handle)
		return nil, &OpError{Op: "map", Dom: dom, Ref: refs[0], Err: err}
	}
	return &simMapping{m: m, b: b, handle: mp.Handle, dom: dom, ref: refs[0]}, nil
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

// Copy performs the copies: per granting domain and direction, one
// checked map request for all the segments, copies through the cached
// RAM view, one unmap request. If a batch is refused, the segments are
// tried one by one so each gets its own status.
func (m *SimMapper) Copy(segs []CopySegment) error {
	if len(segs) > MaxBatch {
		return checkBatch("copy", segs[0].Dom, len(segs))
	}
	if m.local {
		return m.copyLocal(segs)
	}
	var first error
	note := func(s *CopySegment) {
		if s.Status != StatusOkay && first == nil {
			first = &OpError{Op: "copy", Dom: s.Dom, Ref: s.Ref, Err: s.Status}
		}
	}
	var refs [MaxBatch]uint32
	var idx [MaxBatch]int
	var done [MaxBatch]bool
	for _, toGrant := range [2]bool{false, true} {
		for i := range segs {
			if done[i] || segs[i].ToGrant != toGrant {
				continue
			}
			dom, n := segs[i].Dom, 0
			for j := i; j < len(segs); j++ {
				s := &segs[j]
				if done[j] || s.ToGrant != toGrant || s.Dom != dom {
					continue
				}
				done[j] = true
				if len(s.Local) > PageSize || int(s.Offset)+len(s.Local) > PageSize {
					s.Status = StatusBadCopyArg
					continue
				}
				refs[n], idx[n] = uint32(s.Ref), j
				n++
			}
			if n == 0 {
				continue
			}
			if err := m.copyBatch(segs, dom, toGrant, refs[:n], idx[:n]); err != nil {
				for _, j := range idx[:n] {
					m.copyOne(&segs[j])
				}
			}
		}
	}
	for i := range segs {
		note(&segs[i])
	}
	return first
}

// copyBatch copies the segments at idx (all of dom, one direction) under
// one map request.
func (m *SimMapper) copyBatch(segs []CopySegment, dom uint32, toGrant bool, refs []uint32, idx []int) error {
	mp, err := m.d.MapGrants(dom, refs, toGrant)
	if err != nil {
		return err
	}
	view, verr := m.view(dom, toGrant, mp)
	unix.Close(mp.RAMFD)
	if verr == nil {
		for k, j := range idx {
			s := &segs[j]
			page := view[int(mp.Frames[k])*PageSize+int(s.Offset):]
			if toGrant {
				copy(page, s.Local)
			} else {
				copy(s.Local, page)
			}
			s.Status = StatusOkay
		}
	}
	if err := m.d.UnmapGrants(mp.Handle); err != nil && verr == nil {
		verr = err
	}
	return verr
}

// view is a cached mapping of the granter's whole RAM, remade when the
// domain is a new incarnation.
func (m *SimMapper) view(dom uint32, writable bool, mp sim.Mapped) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := viewKey{dom, writable}
	if v := m.views[k]; v != nil && v.gen == mp.Gen {
		return v.b, nil
	} else if v != nil {
		unix.Munmap(v.b)
		delete(m.views, k)
	}
	var st unix.Stat_t
	if err := unix.Fstat(mp.RAMFD, &st); err != nil {
		return nil, err
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	b, err := unix.Mmap(mp.RAMFD, 0, int(st.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	m.views[k] = &ramView{gen: mp.Gen, b: b}
	return b, nil
}

// copyOne copies one segment through a one-page mapping, setting its status.
func (m *SimMapper) copyOne(s *CopySegment) {
	mp, err := m.Map(s.Dom, []Ref{s.Ref}, s.ToGrant)
	if err != nil {
		s.Status = statusOf(err)
		return
	}
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

func statusOf(err error) Status {
	switch {
	case errors.Is(err, sim.ErrPinBusy), errors.Is(err, sim.ErrPinCount):
		return StatusEagain
	case errors.Is(err, sim.ErrPermission):
		return StatusPermissionDenied
	case errors.Is(err, sim.ErrBadGntref):
		return StatusBadGntref
	case errors.Is(err, sim.ErrBadDomain):
		return StatusBadDomain
	}
	return StatusGeneralError
}

// Close drops the cached RAM views and tables; mappings belong to the
// domain's connection.
func (m *SimMapper) Close() error {
	m.mu.Lock()
	for k, v := range m.views {
		unix.Munmap(v.b)
		delete(m.views, k)
	}
	m.mu.Unlock()
	m.tmu.Lock()
	for dom, t := range m.tables {
		unix.Munmap(t.ram)
		unix.Munmap(t.gt)
		delete(m.tables, dom)
	}
	m.tmu.Unlock()
	return nil
}

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

func (s *simGrant) Refs() []Ref { return s.refs }

// Mapped reports whether the grantee still maps any of the pages (the
// check hardened xen-hcd makes before reusing them).
func (s *simGrant) Mapped() bool {
	for _, r := range s.refs[s.ended:] {
		if s.g.d.InUse(uint32(r)) {
			return true
		}
	}
	return false
}

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

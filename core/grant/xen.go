package grant

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Device files of the Xen implementation.
const (
	GntdevPath   = "/dev/xen/gntdev"
	GntallocPath = "/dev/xen/gntalloc"
)

// ioc is _IOC(_IOC_NONE, typ, nr, size) on x86 and arm: direction bits 0.
func ioc(typ byte, nr, size uintptr) uintptr { return size<<16 | uintptr(typ)<<8 | nr }

// ioctl numbers (xen/sys/gntdev.h, xen/sys/gntalloc.h; checked by xen_test.go).
var (
	IoctlGntdevMapGrantRef       = ioc('G', 0, 24)
	IoctlGntdevUnmapGrantRef     = ioc('G', 1, 16)
	IoctlGntdevGetOffsetForVaddr = ioc('G', 2, 24)
	IoctlGntdevSetMaxGrants      = ioc('G', 3, 4)
	IoctlGntdevSetUnmapNotify    = ioc('G', 7, 16)
	IoctlGntdevGrantCopy         = ioc('G', 8, 16)
	IoctlGntallocAllocGref       = ioc('G', 5, 24)
	IoctlGntallocDeallocGref     = ioc('G', 6, 16)
	IoctlGntallocSetUnmapNotify  = ioc('G', 7, 16)
)

// Flags of the ABI.
const (
	gntcopySourceGref      = 1 // GNTCOPY_source_gref
	gntcopyDestGref        = 2 // GNTCOPY_dest_gref
	gntallocFlagWritable   = 1 // GNTALLOC_FLAG_WRITABLE
	copySegmentSize        = 24
	unmapNotifyClearByte   = 1 // UNMAP_NOTIFY_CLEAR_BYTE
	unmapNotifySendEvent   = 2 // UNMAP_NOTIFY_SEND_EVENT
	offMapCount, offMapIdx = 0, 8
	offMapRefs             = 16
)

var le = binary.LittleEndian

// mapGrantRefArg is struct ioctl_gntdev_map_grant_ref with count refs:
// count u32 @0, pad @4, index u64 @8 (out), refs[] {domid u32, ref u32} @16.
func mapGrantRefArg(dom uint32, refs []Ref) []byte {
	b := make([]byte, offMapRefs+8*len(refs))
	le.PutUint32(b[offMapCount:], uint32(len(refs)))
	for i, r := range refs {
		le.PutUint32(b[offMapRefs+8*i:], dom)
		le.PutUint32(b[offMapRefs+8*i+4:], uint32(r))
	}
	return b
}

// unmapGrantRefArg is struct ioctl_gntdev_unmap_grant_ref: index u64 @0, count u32 @8.
func unmapGrantRefArg(index uint64, count int) []byte {
	b := make([]byte, 16)
	le.PutUint64(b[0:], index)
	le.PutUint32(b[8:], uint32(count))
	return b
}

// copySegmentArg encodes struct ioctl_gntdev_grant_copy_segment: source
// @0 and dest @8 (a local address, or {ref u32, offset u16, domid u16}),
// len u16 @16, flags u16 @18, status i16 @20 (out).
func copySegmentArg(b []byte, s *CopySegment, local uint64) {
	foreign := func(off int) {
		le.PutUint32(b[off:], uint32(s.Ref))
		le.PutUint16(b[off+4:], s.Offset)
		le.PutUint16(b[off+6:], uint16(s.Dom))
	}
	if s.ToGrant {
		le.PutUint64(b[0:], local)
		foreign(8)
		le.PutUint16(b[18:], gntcopyDestGref)
	} else {
		foreign(0)
		le.PutUint64(b[8:], local)
		le.PutUint16(b[18:], gntcopySourceGref)
	}
	le.PutUint16(b[16:], uint16(len(s.Local)))
}

// grantCopyArg is struct ioctl_gntdev_grant_copy: count u32 @0, segments pointer @8.
func grantCopyArg(count int, segments uint64) []byte {
	b := make([]byte, 16)
	le.PutUint32(b[0:], uint32(count))
	le.PutUint64(b[8:], segments)
	return b
}

// allocGrefArg is struct ioctl_gntalloc_alloc_gref: domid u16 @0, flags u16 @2,
// count u32 @4, index u64 @8 (out), gref_ids[] u32 @16 (out).
func allocGrefArg(dom uint32, count int, writable bool) []byte {
	b := make([]byte, 16+4*count)
	le.PutUint16(b[0:], uint16(dom))
	if writable {
		le.PutUint16(b[2:], gntallocFlagWritable)
	}
	le.PutUint32(b[4:], uint32(count))
	return b
}

// deallocGrefArg is struct ioctl_gntalloc_dealloc_gref: index u64 @0, count u32 @8.
func deallocGrefArg(index uint64, count int) []byte { return unmapGrantRefArg(index, count) }

// sysOps is the kernel seam: the real syscalls, or a recorder in tests.
type sysOps interface {
	Ioctl(fd int, req uintptr, arg []byte) error
	Mmap(fd int, offset int64, length int, prot int) ([]byte, error)
	Munmap(b []byte) error
}

type realSys struct{}

func (realSys) Ioctl(fd int, req uintptr, arg []byte) error {
	return ioctlBytes(fd, req, arg)
}

func (realSys) Mmap(fd int, offset int64, length, prot int) ([]byte, error) {
	return unix.Mmap(fd, offset, length, prot, unix.MAP_SHARED)
}

func (realSys) Munmap(b []byte) error { return unix.Munmap(b) }

// XenMapper maps grants through /dev/xen/gntdev.
type XenMapper struct {
	fd  int
	sys sysOps

	mu     sync.Mutex
	bounce []byte // anonymous mmap for grant copies: outside the Go heap
}

// OpenXenMapper opens /dev/xen/gntdev.
func OpenXenMapper() (*XenMapper, error) {
	fd, err := unix.Open(GntdevPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", GntdevPath, err)
	}
	return &XenMapper{fd: fd, sys: realSys{}}, nil
}

// Map maps refs of dom: MAP_GRANT_REF reserves an offset, mmap maps the
// pages (PROT_WRITE only when writable: the kernel refuses a writable
// mapping of a read-only grant).
func (m *XenMapper) Map(dom uint32, refs []Ref, writable bool) (Mapping, error) {
	if err := checkBatch("map", dom, len(refs)); err != nil {
		return nil, err
	}
	arg := mapGrantRefArg(dom, refs)
	if err := m.sys.Ioctl(m.fd, IoctlGntdevMapGrantRef, arg); err != nil {
		return nil, &OpError{Op: "map", Dom: dom, Ref: refs[0], Err: os.NewSyscallError("ioctl MAP_GRANT_REF", err)}
	}
	index := le.Uint64(arg[offMapIdx:])
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	b, err := m.sys.Mmap(m.fd, int64(index), len(refs)*PageSize, prot)
	if err != nil {
		_ = m.sys.Ioctl(m.fd, IoctlGntdevUnmapGrantRef, unmapGrantRefArg(index, len(refs)))
		if writable && err == unix.EPERM {
			err = ErrReadOnly
		}
		return nil, &OpError{Op: "map", Dom: dom, Ref: refs[0], Err: err}
	}
	return &xenMapping{m: m, b: b, index: index, count: len(refs), dom: dom, ref: refs[0]}, nil
}

type xenMapping struct {
	m     *XenMapper
	b     []byte
	index uint64
	count int
	dom   uint32
	ref   Ref
	once  sync.Once
	err   error
}

func (x *xenMapping) Bytes() []byte { return x.b }

// Unmap munmaps (which tears the grant mappings down) and then releases
// the offset, as gntdev requires.
func (x *xenMapping) Unmap() error {
	x.once.Do(func() {
		if err := x.m.sys.Munmap(x.b); err != nil {
			x.err = &OpError{Op: "unmap", Dom: x.dom, Ref: x.ref, Err: err}
			return
		}
		if err := x.m.sys.Ioctl(x.m.fd, IoctlGntdevUnmapGrantRef, unmapGrantRefArg(x.index, x.count)); err != nil {
			x.err = &OpError{Op: "unmap", Dom: x.dom, Ref: x.ref, Err: os.NewSyscallError("ioctl UNMAP_GRANT_REF", err)}
		}
	})
	return x.err
}

// Copy does grant copies in one ioctl through a bounce buffer outside the
// Go heap, so the kernel never holds a pointer the garbage collector owns.
func (m *XenMapper) Copy(segs []CopySegment) error {
	if len(segs) == 0 {
		return nil
	}
	if err := checkBatch("copy", segs[0].Dom, len(segs)); err != nil {
		return err
	}
	for i := range segs {
		s := &segs[i]
		if len(s.Local) > PageSize || int(s.Offset)+len(s.Local) > PageSize {
			return &OpError{Op: "copy", Dom: s.Dom, Ref: s.Ref, Err: fmt.Errorf("segment of %d bytes at offset %d crosses the page", len(s.Local), s.Offset)}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bounce == nil {
		b, err := unix.Mmap(-1, 0, (MaxBatch+1)*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return &OpError{Op: "copy", Dom: segs[0].Dom, Err: err}
		}
		m.bounce = b
	}
	table := m.bounce[MaxBatch*PageSize:]
	for i := range segs {
		s := &segs[i]
		page := m.bounce[i*PageSize : (i+1)*PageSize]
		if s.ToGrant {
			copy(page, s.Local)
		}
		copySegmentArg(table[i*copySegmentSize:], s, addressOf(page))
	}
	arg := grantCopyArg(len(segs), addressOf(table))
	if err := m.sys.Ioctl(m.fd, IoctlGntdevGrantCopy, arg); err != nil {
		return &OpError{Op: "copy", Dom: segs[0].Dom, Ref: segs[0].Ref, Err: os.NewSyscallError("ioctl GRANT_COPY", err)}
	}
	var first error
	for i := range segs {
		s := &segs[i]
		s.Status = Status(int16(le.Uint16(table[i*copySegmentSize+20:])))
		if s.Status != StatusOkay {
			if first == nil {
				first = &OpError{Op: "copy", Dom: s.Dom, Ref: s.Ref, Err: s.Status}
			}
			continue
		}
		if !s.ToGrant {
			copy(s.Local, m.bounce[i*PageSize:])
		}
	}
	return first
}

// Close closes the device; mappings must be unmapped first.
func (m *XenMapper) Close() error {
	if m.bounce != nil {
		_ = unix.Munmap(m.bounce)
	}
	return unix.Close(m.fd)
}

// XenGranter grants pages through /dev/xen/gntalloc.
type XenGranter struct {
	fd  int
	sys sysOps
	// LimitPath is gntalloc's module-wide page limit (default 1024): a
	// frontend's dedicated bounce pages take about 530 per vusb, so two
	// vusbs in one guest exceed it. On ENOSPC the limit is raised (we are
	// root in the guest) and the allocation tried once more.
	LimitPath string
}

// GntallocLimit is where Linux exposes gntalloc's limit.
const GntallocLimit = "/sys/module/xen_gntalloc/parameters/limit"

// OpenXenGranter opens /dev/xen/gntalloc.
func OpenXenGranter() (*XenGranter, error) {
	fd, err := unix.Open(GntallocPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", GntallocPath, err)
	}
	return &XenGranter{fd: fd, sys: realSys{}, LimitPath: GntallocLimit}, nil
}

// raiseLimit adds room for count more pages (and some) to gntalloc's limit.
func (g *XenGranter) raiseLimit(count int) error {
	if g.LimitPath == "" {
		return errors.New("no limit to raise")
	}
	b, err := os.ReadFile(g.LimitPath)
	if err != nil {
		return err
	}
	cur, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	return os.WriteFile(g.LimitPath, []byte(strconv.Itoa(cur+max(count, 1024))), 0)
}

// Grant allocates zeroed pages granted to dom and maps them (MAP_SHARED,
// required by gntalloc).
func (g *XenGranter) Grant(dom uint32, count int, writable bool) (Grant, error) {
	if count <= 0 || count > MaxBatch {
		return nil, &OpError{Op: "grant", Dom: dom, Err: fmt.Errorf("%d pages (1..%d)", count, MaxBatch)}
	}
	arg := allocGrefArg(dom, count, writable)
	err := g.sys.Ioctl(g.fd, IoctlGntallocAllocGref, arg)
	if errors.Is(err, unix.ENOSPC) && g.raiseLimit(count) == nil {
		arg = allocGrefArg(dom, count, writable)
		err = g.sys.Ioctl(g.fd, IoctlGntallocAllocGref, arg)
	}
	if err != nil {
		return nil, &OpError{Op: "grant", Dom: dom, Err: os.NewSyscallError("ioctl ALLOC_GREF", err)}
	}
	index := le.Uint64(arg[8:])
	refs := make([]Ref, count)
	for i := range refs {
		refs[i] = Ref(le.Uint32(arg[16+4*i:]))
	}
	b, err := g.sys.Mmap(g.fd, int64(index), count*PageSize, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		_ = g.sys.Ioctl(g.fd, IoctlGntallocDeallocGref, deallocGrefArg(index, count))
		return nil, &OpError{Op: "grant", Dom: dom, Ref: refs[0], Err: err}
	}
	return &xenGrant{g: g, b: b, refs: refs, index: index, dom: dom}, nil
}

type xenGrant struct {
	g     *XenGranter
	b     []byte
	refs  []Ref
	index uint64
	dom   uint32
}

func (x *xenGrant) Refs() []Ref   { return x.refs }
func (x *xenGrant) Bytes() []byte { return x.b }

// End unmaps our view and deallocates. gntalloc only drops our reference:
// the kernel revokes the grant and frees the page once the grantee has
// unmapped it, so a still-mapped page is not reported as ErrBusy here.
func (x *xenGrant) End() error {
	if err := x.g.sys.Munmap(x.b); err != nil {
		return &OpError{Op: "end", Dom: x.dom, Ref: x.refs[0], Err: err}
	}
	if err := x.g.sys.Ioctl(x.g.fd, IoctlGntallocDeallocGref, deallocGrefArg(x.index, len(x.refs))); err != nil {
		return &OpError{Op: "end", Dom: x.dom, Ref: x.refs[0], Err: os.NewSyscallError("ioctl DEALLOC_GREF", err)}
	}
	return nil
}

// Close closes the device.
func (g *XenGranter) Close() error { return unix.Close(g.fd) }

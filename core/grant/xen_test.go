package grant

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pvusb/pvusb/internal/ctest"
)

const abiC = `
#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/sys/gntdev.h>
#include <xen/sys/gntalloc.h>
#define P(n, x) printf("%s %lld\n", n, (long long)(x))
static void dump(const char *n, const void *p, size_t len) {
  const unsigned char *b = p; printf("%s 0x", n);
  for (size_t i = 0; i < len; i++) printf("%02x", b[i]);
  printf("\n");
}
int main(int argc, char **argv) {
  if (argc > 1) {
    /* bytes of the argument structs filled with sample values */
    struct { struct ioctl_gntdev_map_grant_ref m; struct ioctl_gntdev_grant_ref more[2]; } map;
    memset(&map, 0, sizeof map);
    map.m.count = 3;
    map.m.refs[0].domid = 7; map.m.refs[0].ref = 100;
    map.m.refs[1].domid = 7; map.m.refs[1].ref = 101;
    map.m.refs[2].domid = 7; map.m.refs[2].ref = 0xdeadbeef;
    dump("map", &map, sizeof map);
    struct ioctl_gntdev_unmap_grant_ref un = { .index = 0x123456789aULL, .count = 3 };
    dump("unmap", &un, sizeof un);
    struct ioctl_gntdev_grant_copy_segment in, out;
    memset(&in, 0, sizeof in); memset(&out, 0, sizeof out);
    in.source.foreign.ref = 42; in.source.foreign.offset = 100; in.source.foreign.domid = 5;
    in.dest.virt = (void *)0x7f0000001000ULL; in.len = 512; in.flags = GNTCOPY_source_gref;
    dump("copy_in", &in, sizeof in);
    out.source.virt = (void *)0x7f0000002000ULL; out.dest.foreign.ref = 43; out.dest.foreign.offset = 8;
    out.dest.foreign.domid = 5; out.len = 4088; out.flags = GNTCOPY_dest_gref;
    dump("copy_out", &out, sizeof out);
    struct ioctl_gntdev_grant_copy gc; memset(&gc, 0, sizeof gc);
    gc.count = 2; gc.segments = (void *)0x7f0000003000ULL;
    dump("copy", &gc, sizeof gc);
    struct { struct ioctl_gntalloc_alloc_gref a; uint32_t more[1]; } al;
    memset(&al, 0, sizeof al);
    al.a.domid = 9; al.a.flags = GNTALLOC_FLAG_WRITABLE; al.a.count = 2;
    dump("alloc", &al, sizeof al);
    struct ioctl_gntalloc_dealloc_gref de; memset(&de, 0, sizeof de);
    de.index = 0x1000; de.count = 2;
    dump("dealloc", &de, sizeof de);
    return 0;
  }
  P("IOCTL_GNTDEV_MAP_GRANT_REF", IOCTL_GNTDEV_MAP_GRANT_REF);
  P("IOCTL_GNTDEV_UNMAP_GRANT_REF", IOCTL_GNTDEV_UNMAP_GRANT_REF);
  P("IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR", IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR);
  P("IOCTL_GNTDEV_SET_MAX_GRANTS", IOCTL_GNTDEV_SET_MAX_GRANTS);
  P("IOCTL_GNTDEV_SET_UNMAP_NOTIFY", IOCTL_GNTDEV_SET_UNMAP_NOTIFY);
  P("IOCTL_GNTDEV_GRANT_COPY", IOCTL_GNTDEV_GRANT_COPY);
  P("IOCTL_GNTALLOC_ALLOC_GREF", IOCTL_GNTALLOC_ALLOC_GREF);
  P("IOCTL_GNTALLOC_DEALLOC_GREF", IOCTL_GNTALLOC_DEALLOC_GREF);
  P("IOCTL_GNTALLOC_SET_UNMAP_NOTIFY", IOCTL_GNTALLOC_SET_UNMAP_NOTIFY);
  P("sizeof.map_grant_ref", sizeof(struct ioctl_gntdev_map_grant_ref));
  P("offset.map.index", offsetof(struct ioctl_gntdev_map_grant_ref, index));
  P("offset.map.refs", offsetof(struct ioctl_gntdev_map_grant_ref, refs));
  P("sizeof.copy_segment", sizeof(struct ioctl_gntdev_grant_copy_segment));
  P("offset.copy_segment.status", offsetof(struct ioctl_gntdev_grant_copy_segment, status));
  P("sizeof.alloc_gref", sizeof(struct ioctl_gntalloc_alloc_gref));
  P("offset.alloc.index", offsetof(struct ioctl_gntalloc_alloc_gref, index));
  P("offset.alloc.gref_ids", offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids));
  P("GNTCOPY_source_gref", GNTCOPY_source_gref); P("GNTCOPY_dest_gref", GNTCOPY_dest_gref);
  P("GNTALLOC_FLAG_WRITABLE", GNTALLOC_FLAG_WRITABLE);
  P("UNMAP_NOTIFY_CLEAR_BYTE", UNMAP_NOTIFY_CLEAR_BYTE); P("UNMAP_NOTIFY_SEND_EVENT", UNMAP_NOTIFY_SEND_EVENT);
  P("GNTST_okay", GNTST_okay); P("GNTST_bad_gntref", GNTST_bad_gntref);
  P("GNTST_permission_denied", GNTST_permission_denied); P("GNTST_no_space", GNTST_no_space);
  return 0;
}`

func TestIoctlNumbersAndLayoutsMatchC(t *testing.T) {
	exe := ctest.Build(t, "grant_abi", abiC, "-Wno-array-bounds") // refs[1] is the old flexible-array idiom
	ctest.Compare(t, ctest.Values(t, exe), map[string]int64{
		"IOCTL_GNTDEV_MAP_GRANT_REF": int64(IoctlGntdevMapGrantRef), "IOCTL_GNTDEV_UNMAP_GRANT_REF": int64(IoctlGntdevUnmapGrantRef),
		"IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR": int64(IoctlGntdevGetOffsetForVaddr), "IOCTL_GNTDEV_SET_MAX_GRANTS": int64(IoctlGntdevSetMaxGrants),
		"IOCTL_GNTDEV_SET_UNMAP_NOTIFY": int64(IoctlGntdevSetUnmapNotify), "IOCTL_GNTDEV_GRANT_COPY": int64(IoctlGntdevGrantCopy),
		"IOCTL_GNTALLOC_ALLOC_GREF": int64(IoctlGntallocAllocGref), "IOCTL_GNTALLOC_DEALLOC_GREF": int64(IoctlGntallocDeallocGref),
		"IOCTL_GNTALLOC_SET_UNMAP_NOTIFY": int64(IoctlGntallocSetUnmapNotify),
		"sizeof.map_grant_ref":            24, "offset.map.index": offMapIdx, "offset.map.refs": offMapRefs,
		"sizeof.copy_segment": copySegmentSize, "offset.copy_segment.status": 20,
		"sizeof.alloc_gref": 24, "offset.alloc.index": 8, "offset.alloc.gref_ids": 16,
		"GNTCOPY_source_gref": gntcopySourceGref, "GNTCOPY_dest_gref": gntcopyDestGref,
		"GNTALLOC_FLAG_WRITABLE": gntallocFlagWritable, "UNMAP_NOTIFY_CLEAR_BYTE": unmapNotifyClearByte,
		"UNMAP_NOTIFY_SEND_EVENT": unmapNotifySendEvent, "GNTST_okay": int64(StatusOkay),
		"GNTST_bad_gntref": int64(StatusBadGntref), "GNTST_permission_denied": int64(StatusPermissionDenied),
		"GNTST_no_space": int64(StatusNoSpace),
	})

	c := ctest.HexArgs(t, exe, "bytes")
	check := func(name string, got []byte) {
		t.Helper()
		if !bytes.Equal(got, c[name]) {
			t.Errorf("%s:\n go % x\n  c % x", name, got, c[name])
		}
	}
	check("map", mapGrantRefArg(7, []Ref{100, 101, 0xdeadbeef}))
	check("unmap", unmapGrantRefArg(0x123456789a, 3))
	seg := make([]byte, copySegmentSize)
	copySegmentArg(seg, &CopySegment{Dom: 5, Ref: 42, Offset: 100, Local: make([]byte, 512)}, 0x7f0000001000)
	check("copy_in", seg)
	seg = make([]byte, copySegmentSize)
	copySegmentArg(seg, &CopySegment{Dom: 5, Ref: 43, Offset: 8, Local: make([]byte, 4088), ToGrant: true}, 0x7f0000002000)
	check("copy_out", seg)
	check("copy", grantCopyArg(2, 0x7f0000003000))
	if a := allocGrefArg(9, 2, true); !bytes.Equal(a, c["alloc"][:len(a)]) { // C adds tail padding
		t.Errorf("alloc:\n go % x\n  c % x", a, c["alloc"])
	}
	check("dealloc", deallocGrefArg(0x1000, 2))
}

// fakeKernel records ioctls and plays gntdev/gntalloc.
type fakeKernel struct {
	calls   []uintptr
	args    [][]byte
	mmaps   []int64
	prots   []int
	unmaps  int
	failReq uintptr
	failErr unix.Errno // what failReq fails with (EINVAL unless set)
	failN   int        // how many times (0: always)
	mmapErr error
	statusN int16
	mapper  *XenMapper
}

func (k *fakeKernel) Ioctl(fd int, req uintptr, arg []byte) error {
	k.calls = append(k.calls, req)
	k.args = append(k.args, append([]byte(nil), arg...))
	if req == k.failReq {
		if k.failN >= 0 {
			if k.failN == 1 {
				k.failReq = 0
			}
			k.failN--
		}
		if k.failErr != 0 {
			return k.failErr
		}
		return unix.EINVAL
	}
	switch req {
	case IoctlGntdevMapGrantRef:
		le.PutUint64(arg[8:], 0x5000)
	case IoctlGntallocAllocGref:
		le.PutUint64(arg[8:], 0x9000)
		for i := 0; i < int(le.Uint32(arg[4:])); i++ {
			le.PutUint32(arg[16+4*i:], uint32(200+i))
		}
	case IoctlGntdevGrantCopy:
		// The status of the second segment, if any.
		if le.Uint32(arg[0:]) > 1 {
			// The kernel writes statuses into the segment table, which sits
			// in the mapper's bounce mapping right after the pages.
			tbl := k.mapper.bounce[MaxBatch*PageSize:]
			if addressOf(tbl) != le.Uint64(arg[8:]) {
				panic("segments pointer is not the bounce table")
			}
			le.PutUint16(tbl[copySegmentSize+20:], uint16(k.statusN))
		}
	}
	return nil
}

func (k *fakeKernel) Mmap(fd int, off int64, n, prot int) ([]byte, error) {
	if k.mmapErr != nil {
		return nil, k.mmapErr
	}
	k.mmaps = append(k.mmaps, off)
	k.prots = append(k.prots, prot)
	return make([]byte, n), nil
}

func (k *fakeKernel) Munmap([]byte) error { k.unmaps++; return nil }

func TestXenMapperBelowTheIoctl(t *testing.T) {
	k := &fakeKernel{}
	m := &XenMapper{fd: -1, sys: k}
	mp, err := m.Map(4, []Ref{10, 11}, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(mp.Bytes()) != 2*PageSize || k.mmaps[0] != 0x5000 || k.prots[0] != unix.PROT_READ {
		t.Errorf("mmap at %#x prot %d len %d", k.mmaps, k.prots, len(mp.Bytes()))
	}
	if !bytes.Equal(k.args[0], mapGrantRefArg(4, []Ref{10, 11})) && le.Uint32(k.args[0][16:]) != 4 {
		t.Error("map argument")
	}
	if err := mp.Unmap(); err != nil || k.unmaps != 1 || k.calls[1] != IoctlGntdevUnmapGrantRef || le.Uint64(k.args[1]) != 0x5000 || le.Uint32(k.args[1][8:]) != 2 {
		t.Errorf("unmap: %v %v", err, k.calls)
	}
	if mp.Unmap() != nil || k.unmaps != 1 {
		t.Error("second unmap did work again")
	}
	if _, err := m.Map(4, []Ref{1}, true); err != nil || k.prots[1] != unix.PROT_READ|unix.PROT_WRITE {
		t.Error("writable map prot")
	}
	// The kernel refuses a writable mmap of a read-only grant with EPERM.
	k.mmapErr = unix.EPERM
	if _, err := m.Map(4, []Ref{1}, true); !errors.Is(err, ErrReadOnly) || k.calls[len(k.calls)-1] != IoctlGntdevUnmapGrantRef {
		t.Errorf("read-only grant mapped writable: %v, offset not released: %v", err, k.calls)
	}
	k.mmapErr = nil
	if _, err := m.Map(4, nil, false); err == nil {
		t.Error("empty batch")
	}
	if _, err := m.Map(4, make([]Ref, MaxBatch+1), false); err == nil {
		t.Error("oversized batch")
	}
	k.failReq = IoctlGntdevMapGrantRef
	var oe *OpError
	if _, err := m.Map(4, []Ref{77}, false); !errors.As(err, &oe) || oe.Ref != 77 || oe.Dom != 4 || !errors.Is(err, unix.EINVAL) {
		t.Errorf("ioctl failure: %v", err)
	}
}

func TestXenGrantCopyBelowTheIoctl(t *testing.T) {
	k := &fakeKernel{statusN: int16(StatusPermissionDenied)}
	m := &XenMapper{fd: -1, sys: k}
	k.mapper = m
	defer m.Close()
	in, out := make([]byte, 100), bytes.Repeat([]byte{7}, 50)
	segs := []CopySegment{{Dom: 2, Ref: 5, Offset: 10, Local: in}, {Dom: 2, Ref: 6, Local: out, ToGrant: true}}
	err := m.Copy(segs)
	if !errors.Is(err, StatusPermissionDenied) || segs[0].Status != StatusOkay || segs[1].Status != StatusPermissionDenied {
		t.Errorf("copy statuses: %v %v %v", err, segs[0].Status, segs[1].Status)
	}
	if k.calls[0] != IoctlGntdevGrantCopy || le.Uint32(k.args[0]) != 2 {
		t.Errorf("copy ioctl %v", k.calls)
	}
	if err := m.Copy([]CopySegment{{Dom: 2, Ref: 5, Offset: 4000, Local: make([]byte, 200)}}); err == nil {
		t.Error("segment crossing the page accepted")
	}
}

func TestXenGranterBelowTheIoctl(t *testing.T) {
	k := &fakeKernel{}
	g := &XenGranter{fd: -1, sys: k}
	gr, err := g.Grant(0, 3, true)
	if err != nil {
		t.Fatal(err)
	}
	if refs := gr.Refs(); len(refs) != 3 || refs[0] != 200 || refs[2] != 202 || k.mmaps[0] != 0x9000 {
		t.Errorf("refs %v mmap %#x", refs, k.mmaps)
	}
	if !bytes.Equal(k.args[0][:8], allocGrefArg(0, 3, true)[:8]) {
		t.Error("alloc argument")
	}
	if err := gr.End(); err != nil || k.calls[1] != IoctlGntallocDeallocGref || le.Uint64(k.args[1]) != 0x9000 || le.Uint32(k.args[1][8:]) != 3 {
		t.Errorf("end: %v %v", err, k.calls)
	}
	if _, err := g.Grant(0, 0, true); err == nil {
		t.Error("zero pages")
	}
}

// gntalloc's module-wide limit (1024 pages by default) is raised when an
// allocation hits it, and the allocation tried again.
func TestXenGranterRaisesTheModuleLimit(t *testing.T) {
	limit := filepath.Join(t.TempDir(), "limit")
	os.WriteFile(limit, []byte("1024\n"), 0o644)
	k := &fakeKernel{failReq: IoctlGntallocAllocGref, failErr: unix.ENOSPC, failN: 1}
	g := &XenGranter{fd: -1, sys: k, LimitPath: limit}
	if _, err := g.Grant(0, 16, true); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(limit); string(b) != "2048" {
		t.Fatalf("limit %q", b)
	}
	k = &fakeKernel{failReq: IoctlGntallocAllocGref, failErr: unix.ENOSPC}
	g = &XenGranter{fd: -1, sys: k, LimitPath: filepath.Join(t.TempDir(), "missing")}
	if _, err := g.Grant(0, 16, true); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("without a limit to raise: %v", err)
	}
}

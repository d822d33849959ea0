// Package grant is the grant-table seam of the hypervisor: a backend maps
// (or copies) pages a frontend granted it; a frontend grants its own pages
// to a backend. Two implementations sit behind the interfaces: the Xen
// device files (/dev/xen/gntdev, /dev/xen/gntalloc) and the simulated
// hypervisor (core/sim), with real shared memory in both.
package grant

import (
	"errors"
	"fmt"
)

// PageSize is the Xen page size; every grant covers one page.
const PageSize = 4096

// Ref is a grant reference in the granting domain's table.
type Ref uint32

// Mapping is a batch of mapped grants, contiguous in our address space.
type Mapping interface {
	// Bytes is the mapped memory: len(refs) pages. Read-only mappings
	// fault on write.
	Bytes() []byte
	// Unmap releases the mapping. The granter can end access only after.
	Unmap() error
}

// Mapper maps or copies pages other domains granted (gntdev). Safe for
// concurrent use.
type Mapper interface {
	// Map maps refs of domain dom in one batch, writable or read-only.
	// A writable map of a read-only grant fails.
	Map(dom uint32, refs []Ref, writable bool) (Mapping, error)
	// Copy performs grant copies (IOCTL_GNTDEV_GRANT_COPY): nothing stays
	// mapped afterwards. Each segment's Status is set.
	Copy(segs []CopySegment) error
	Close() error
}

// CopySegment copies between a granted page and local memory.
type CopySegment struct {
	Dom     uint32 // granting domain
	Ref     Ref
	Offset  uint16 // in the granted page; Offset+len(Local) <= PageSize
	Local   []byte // local buffer, at most PageSize bytes
	ToGrant bool   // true: Local -> grant (needs a writable grant); false: grant -> Local
	Status  Status // out: GNTST_*
}

// Status is a GNTST_* code of a grant operation (xen/grant_table.h).
type Status int16

// Grant operation statuses.
const (
	StatusOkay             Status = 0
	StatusGeneralError     Status = -1
	StatusBadDomain        Status = -2
	StatusBadGntref        Status = -3
	StatusBadHandle        Status = -4
	StatusBadVirtAddr      Status = -5
	StatusBadDevAddr       Status = -6
	StatusNoDeviceSpace    Status = -7
	StatusPermissionDenied Status = -8
	StatusBadPage          Status = -9
	StatusBadCopyArg       Status = -10
	StatusAddressTooBig    Status = -11
	StatusEagain           Status = -12
	StatusNoSpace          Status = -13
)

func (s Status) Error() string {
	names := [...]string{"okay", "general error", "bad domain", "bad grant reference", "bad handle",
		"bad virtual address", "bad device address", "no device space", "permission denied",
		"bad page", "bad copy argument", "address too big", "eagain", "no space"}
	if s <= 0 && int(-s) < len(names) {
		return "grant: " + names[-s]
	}
	return fmt.Sprintf("grant: status %d", int16(s))
}

// Grant is a set of our own pages granted to one domain.
type Grant interface {
	// Refs are the grant references, one per page, to publish (XenStore,
	// ring requests).
	Refs() []Ref
	// Bytes is our view of the pages, len(Refs()) pages, zeroed at grant.
	Bytes() []byte
	// End revokes the grants and frees the pages. It fails with ErrBusy
	// while the grantee still maps a page, as gnttab_end_foreign_access.
	End() error
}

// Granter grants our own pages (gntalloc). Safe for concurrent use.
type Granter interface {
	// Grant allocates count zeroed pages and grants them to dom,
	// writable or read-only.
	Grant(dom uint32, count int, writable bool) (Grant, error)
	Close() error
}

// Errors callers branch on.
var (
	// ErrBusy: access cannot end while the grantee maps the page.
	ErrBusy = errors.New("grant: page still mapped by the grantee")
	// ErrReadOnly: a writable map or a copy into a read-only grant.
	ErrReadOnly = errors.New("grant: read-only grant")
	// ErrNotSupported: this implementation cannot do that here.
	ErrNotSupported = errors.New("grant: not supported")
)

// OpError is a failed grant operation with its context.
type OpError struct {
	Op  string // "map", "copy", "grant", "end", "unmap"
	Dom uint32
	Ref Ref
	Err error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("%s grant %d of dom%d: %v", e.Op, e.Ref, e.Dom, e.Err)
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }

// MaxBatch bounds one Map or Copy: the 16 data segments of a URB, twice
// over, plus the two rings. Linux's gntdev default limit is far higher;
// this is our own bound on what one hostile request can make us map.
const MaxBatch = 64

func checkBatch(op string, dom uint32, n int) error {
	if n == 0 || n > MaxBatch {
		return &OpError{Op: op, Dom: dom, Err: fmt.Errorf("batch of %d grants (1..%d)", n, MaxBatch)}
	}
	return nil
}

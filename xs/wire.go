// Package xs speaks XenStore: the xsd_sockmsg wire protocol of
// xen/io/xs_wire.h, a client for the xenstored socket and /dev/xen/xenbus,
// and a server for the simulated hypervisor.
package xs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Op is enum xsd_sockmsg_type.
type Op uint32

// Message types (xs_wire.h).
const (
	OpControl            Op = 0 // XS_CONTROL, also XS_DEBUG
	OpDirectory          Op = 1
	OpRead               Op = 2
	OpGetPerms           Op = 3
	OpWatch              Op = 4
	OpUnwatch            Op = 5
	OpTransactionStart   Op = 6
	OpTransactionEnd     Op = 7
	OpIntroduce          Op = 8
	OpRelease            Op = 9
	OpGetDomainPath      Op = 10
	OpWrite              Op = 11
	OpMkdir              Op = 12
	OpRm                 Op = 13
	OpSetPerms           Op = 14
	OpWatchEvent         Op = 15
	OpError              Op = 16
	OpIsDomainIntroduced Op = 17
	OpResume             Op = 18
	OpSetTarget          Op = 19
	OpResetWatches       Op = 21 // 20 was XS_RESTRICT, removed
	OpDirectoryPart      Op = 22
	OpTypeCount          Op = 23
	OpInvalid            Op = 0xffff
)

var opNames = [...]string{"CONTROL", "DIRECTORY", "READ", "GET_PERMS", "WATCH", "UNWATCH",
	"TRANSACTION_START", "TRANSACTION_END", "INTRODUCE", "RELEASE", "GET_DOMAIN_PATH", "WRITE",
	"MKDIR", "RM", "SET_PERMS", "WATCH_EVENT", "ERROR", "IS_DOMAIN_INTRODUCED", "RESUME",
	"SET_TARGET", "RESTRICT", "RESET_WATCHES", "DIRECTORY_PART"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return fmt.Sprintf("OP%d", uint32(o))
}

// Limits (xs_wire.h).
const (
	HeaderSize     = 16   // sizeof(struct xsd_sockmsg)
	PayloadMax     = 4096 // XENSTORE_PAYLOAD_MAX: longer kills the connection
	AbsPathMax     = 3072 // XENSTORE_ABS_PATH_MAX
	RelPathMax     = 2048 // XENSTORE_REL_PATH_MAX
	offType        = 0
	offReqID       = 4
	offTxID        = 8
	offLen         = 12
	watchEventReq  = 0 // req_id of a WATCH_EVENT
	domainPathBase = "/local/domain/"
)

// Header is struct xsd_sockmsg.
type Header struct {
	Op    Op
	ReqID uint32
	TxID  uint32
	Len   uint32
}

// Encode writes the 16 header bytes.
func (h Header) Encode(b *[HeaderSize]byte) {
	binary.LittleEndian.PutUint32(b[offType:], uint32(h.Op))
	binary.LittleEndian.PutUint32(b[offReqID:], h.ReqID)
	binary.LittleEndian.PutUint32(b[offTxID:], h.TxID)
	binary.LittleEndian.PutUint32(b[offLen:], h.Len)
}

// DecodeHeader reads 16 header bytes.
func DecodeHeader(b *[HeaderSize]byte) Header {
	return Header{
		Op:    Op(binary.LittleEndian.Uint32(b[offType:])),
		ReqID: binary.LittleEndian.Uint32(b[offReqID:]),
		TxID:  binary.LittleEndian.Uint32(b[offTxID:]),
		Len:   binary.LittleEndian.Uint32(b[offLen:]),
	}
}

// Msg is one message: header fields and payload.
type Msg struct {
	Op      Op
	ReqID   uint32
	TxID    uint32
	Payload []byte
}

// ErrTooLong: a payload over PayloadMax, which xenstored answers by
// closing the connection.
var ErrTooLong = errors.New("xenstore: payload longer than 4096 bytes")

// ReadMsg reads one message. A length over PayloadMax is ErrTooLong
// before any payload is read, so a hostile peer cannot make us allocate.
func ReadMsg(r io.Reader) (Msg, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Msg{}, err
	}
	h := DecodeHeader(&hb)
	if h.Len > PayloadMax {
		return Msg{}, fmt.Errorf("%w: %s of %d bytes", ErrTooLong, h.Op, h.Len)
	}
	m := Msg{Op: h.Op, ReqID: h.ReqID, TxID: h.TxID, Payload: make([]byte, h.Len)}
	if _, err := io.ReadFull(r, m.Payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Msg{}, fmt.Errorf("read %s payload: %w", h.Op, err)
	}
	return m, nil
}

// AppendMsg appends the encoded message to b.
func AppendMsg(b []byte, m Msg) ([]byte, error) {
	if len(m.Payload) > PayloadMax {
		return b, fmt.Errorf("%w: %s of %d bytes", ErrTooLong, m.Op, len(m.Payload))
	}
	var hb [HeaderSize]byte
	Header{Op: m.Op, ReqID: m.ReqID, TxID: m.TxID, Len: uint32(len(m.Payload))}.Encode(&hb)
	return append(append(b, hb[:]...), m.Payload...), nil
}

// Errno is an error reply: the errno name xenstored sends as the payload.
type Errno string

// The errors of xs_wire.h's xsd_errors table.
const (
	EINVAL    Errno = "EINVAL"
	EACCES    Errno = "EACCES"
	EEXIST    Errno = "EEXIST"
	EISDIR    Errno = "EISDIR"
	ENOENT    Errno = "ENOENT"
	ENOMEM    Errno = "ENOMEM"
	ENOSPC    Errno = "ENOSPC"
	EIO       Errno = "EIO"
	ENOTEMPTY Errno = "ENOTEMPTY"
	ENOSYS    Errno = "ENOSYS"
	EROFS     Errno = "EROFS"
	EBUSY     Errno = "EBUSY"
	EAGAIN    Errno = "EAGAIN"
	EISCONN   Errno = "EISCONN"
	E2BIG     Errno = "E2BIG"
	EPERM     Errno = "EPERM"
	EQUOTA    Errno = "EQUOTA" // sent by xenstored for quota violations (not in xsd_errors)
)

// Errnos lists xsd_errors in the header's order.
var Errnos = []Errno{EINVAL, EACCES, EEXIST, EISDIR, ENOENT, ENOMEM, ENOSPC, EIO, ENOTEMPTY, ENOSYS, EROFS, EBUSY, EAGAIN, EISCONN, E2BIG, EPERM}

func (e Errno) Error() string { return "xenstore: " + string(e) }

// Perm is one permission entry: "n<domid>", "r<domid>", "w<domid>", "b<domid>".
// The first entry of a node's list names the owner and what every domain
// not listed may do.
type Perm struct {
	Dom    uint32
	Access Access
}

// Access is what a permission entry allows.
type Access byte

// Access letters of the wire format.
const (
	AccessNone  Access = 'n'
	AccessRead  Access = 'r'
	AccessWrite Access = 'w'
	AccessBoth  Access = 'b'
)

// CanRead reports read access.
func (a Access) CanRead() bool { return a == AccessRead || a == AccessBoth }

// CanWrite reports write access.
func (a Access) CanWrite() bool { return a == AccessWrite || a == AccessBoth }

func (p Perm) String() string { return fmt.Sprintf("%c%d", p.Access, p.Dom) }

// ParsePerm parses one entry such as "r1".
func ParsePerm(s string) (Perm, error) {
	if len(s) < 2 {
		return Perm{}, fmt.Errorf("permission %q: too short", s)
	}
	a := Access(s[0])
	switch a {
	case AccessNone, AccessRead, AccessWrite, AccessBoth:
	default:
		return Perm{}, fmt.Errorf("permission %q: access %q not one of n r w b", s, s[0])
	}
	d, err := parseUint(s[1:], 0xffff)
	if err != nil {
		return Perm{}, fmt.Errorf("permission %q: %w", s, err)
	}
	return Perm{Dom: uint32(d), Access: a}, nil
}

// parseUint parses canonical decimal (no sign, no leading zeros, no
// spaces) up to max.
func parseUint(s string, max uint64) (uint64, error) {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a canonical decimal number", s)
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a canonical decimal number", s)
		}
		v = v*10 + uint64(c-'0')
		if v > max {
			return 0, fmt.Errorf("%q exceeds %d", s, max)
		}
	}
	return v, nil
}

// ValidPath checks a path as xenstored does: absolute ("/…", at most
// AbsPathMax) or relative (at most RelPathMax), characters
// [A-Za-z0-9-/_@], no "//", no trailing "/" except the root, no NUL.
// Special watch paths ("@introduceDomain") are valid too.
func ValidPath(p string) error {
	if p == "" {
		return fmt.Errorf("empty path: %w", EINVAL)
	}
	if p[0] == '@' {
		if p == "@introduceDomain" || p == "@releaseDomain" {
			return nil
		}
		return fmt.Errorf("path %q: unknown special path: %w", p, EINVAL)
	}
	if p[0] == '/' && len(p) > AbsPathMax || p[0] != '/' && len(p) > RelPathMax {
		return fmt.Errorf("path of %d bytes too long: %w", len(p), EINVAL)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-/_@", c) >= 0
		if !ok {
			return fmt.Errorf("path %q: character %q not allowed: %w", p, c, EINVAL)
		}
	}
	if strings.Contains(p, "//") || (len(p) > 1 && p[len(p)-1] == '/') {
		return fmt.Errorf("path %q: empty component: %w", p, EINVAL)
	}
	return nil
}

// DomainPath is /local/domain/<dom>, the home of a domain's relative paths.
func DomainPath(dom uint32) string { return fmt.Sprintf("%s%d", domainPathBase, dom) }

// joinNul builds a payload of NUL-terminated strings.
func joinNul(parts ...string) []byte {
	n := 0
	for _, p := range parts {
		n += len(p) + 1
	}
	b := make([]byte, 0, n)
	for _, p := range parts {
		b = append(append(b, p...), 0)
	}
	return b
}

// splitNul splits a payload of NUL-terminated strings. A missing final NUL
// is tolerated; empty input gives no strings.
func splitNul(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	if b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return strings.Split(string(b), "\x00")
}

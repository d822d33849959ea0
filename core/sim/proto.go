// Package sim is the simulated Xen hypervisor: domains are processes, a
// domain's RAM is a memfd it shares with the hypervisor, grants are v1
// grant-table entries in another shared memfd, event channels are
// eventfds, and XenStore is the xs server with one socket per domain.
// Everything that crosses between domains is real shared memory.
//
// The hypervisor (Hypervisor, run by `pvusb sim`) listens on DIR/sim.sock
// (a SOCK_SEQPACKET socket carrying JSON messages and SCM_RIGHTS); a
// process joins as domain N with Join(DIR, N).
package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Files in the simulator's directory.
const (
	ControlSocket = "sim.sock"        // the hypervisor
	Dom0XenStore  = "xenstored.sock"  // dom0's XenStore (works with XENSTORED_PATH)
	domXenStore   = "xenstored-dom%d" // other domains' XenStore sockets, + ".sock"
)

// XenStorePath is the XenStore socket of domain dom in dir.
func XenStorePath(dir string, dom uint32) string {
	if dom == 0 {
		return filepath.Join(dir, Dom0XenStore)
	}
	return filepath.Join(dir, fmt.Sprintf(domXenStore+".sock", dom))
}

// Grant-table entry v1 (struct grant_entry_v1, xen/grant_table.h):
// flags u16 @0, domid u16 @2, frame u32 @4.
const (
	GrantEntrySize  = 8
	GrantTablePages = 4
	GrantEntries    = GrantTablePages * 4096 / GrantEntrySize
	FirstGrantRef   = 8 // refs 0-7 are reserved for the toolstack, as on Xen

	GTFPermitAccess = 1      // GTF_permit_access
	GTFReadonly     = 1 << 2 // GTF_readonly
	GTFReading      = 1 << 3 // GTF_reading: the hypervisor maps it
	GTFWriting      = 1 << 4 // GTF_writing: mapped writable
)

// PageSize is the simulated page, a Xen page.
const PageSize = 4096

// MaxMapBatch bounds one map request (grant.MaxBatch).
const MaxMapBatch = 64

// DefaultRAMPages is a domain's simulated RAM: 16 MiB, allocated lazily
// by the kernel as pages are touched.
const DefaultRAMPages = 4096

type request struct {
	ID       uint64   `json:"id"`
	Op       string   `json:"op"`
	Dom      uint32   `json:"dom,omitempty"`
	RAMPages int      `json:"ram_pages,omitempty"`
	Refs     []uint32 `json:"refs,omitempty"`
	Writable bool     `json:"writable,omitempty"`
	Handle   uint64   `json:"handle,omitempty"`
	Port     uint32   `json:"port,omitempty"`
}

type reply struct {
	ID     uint64   `json:"id"`
	Err    string   `json:"err,omitempty"`
	Code   string   `json:"code,omitempty"`
	Frames []uint32 `json:"frames,omitempty"`
	Handle uint64   `json:"handle,omitempty"`
	Port   uint32   `json:"port,omitempty"`
	// Gen is the granter's incarnation (a map reply): a domid that left and
	// joined again is a new domain with new RAM.
	Gen uint64 `json:"gen,omitempty"`
	// FDs names what the attached descriptors are, in order.
	FDs []string `json:"fds,omitempty"`
	// Event is set on messages the hypervisor sends unasked.
	Event string `json:"event,omitempty"`
	Dom   uint32 `json:"edom,omitempty"`
}

// Error codes on the wire; the domain side turns them into errors the
// grant and evtchn packages branch on.
const (
	codeInvalid    = "invalid"
	codeBadDomain  = "bad_domain"
	codeBadGntref  = "bad_gntref"
	codePermission = "permission_denied"
	codeNotBound   = "not_bound"
	codePeerGone   = "peer_gone"
)

// CodeError is an error the hypervisor answered.
type CodeError struct {
	Code string
	Msg  string
}

func (e *CodeError) Error() string { return "sim: " + e.Msg }

// Is lets callers match by code: errors.Is(err, &sim.CodeError{Code: …}).
func (e *CodeError) Is(target error) bool {
	t, ok := target.(*CodeError)
	return ok && t.Code == e.Code
}

// Errors by code.
var (
	ErrBadDomain  = &CodeError{Code: codeBadDomain, Msg: "no such domain"}
	ErrBadGntref  = &CodeError{Code: codeBadGntref, Msg: "bad grant reference"}
	ErrPermission = &CodeError{Code: codePermission, Msg: "permission denied"}
	ErrNotBound   = &CodeError{Code: codeNotBound, Msg: "port not bound"}
	ErrPeerGone   = &CodeError{Code: codePeerGone, Msg: "peer closed the channel"}
)

// maxMsg bounds one message; the largest (a map reply of 64 frames) is ~1 KiB.
const maxMsg = 16 << 10

// sendMsg writes one message with optional descriptors.
func sendMsg(c *net.UnixConn, v any, fds ...int) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// reader reads messages with buffers reused across reads; one per goroutine.
type reader struct {
	buf [maxMsg]byte
	oob [64]byte // room for the SCM_RIGHTS of up to 8 descriptors
}

// recvMsg reads one message and any descriptors that came with it.
func (rd *reader) recvMsg(c *net.UnixConn, v any) ([]int, error) {
	buf, oob := rd.buf[:], rd.oob[:unix.CmsgSpace(4*8)]
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, err
		}
		for i := range msgs {
			got, err := unix.ParseUnixRights(&msgs[i])
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		closeAll(fds)
		return nil, errors.New("sim: message truncated")
	}
	if n == 0 {
		closeAll(fds)
		return nil, net.ErrClosed // SOCK_SEQPACKET: a zero-length read is the peer closing
	}
	if err := json.Unmarshal(buf[:n], v); err != nil {
		closeAll(fds)
		return nil, fmt.Errorf("sim: bad message: %w", err)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

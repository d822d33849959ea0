// Package xenbus runs the XenBus handshake of a split driver over
// XenStore: the frontend machine as Linux xen-hcd does it and the backend
// machine as QEMU's xen-usb does it (usbif-protocol.md §3), plus
// reconnect, a peer that vanishes, and a peer that never answers.
//
// Both machines are level-triggered: on every watch event they re-read
// the nodes they depend on and act on what is there now, so coalesced,
// spurious or reordered events are harmless.
package xenbus

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/pvusb/pvusb/xs"
)

// State is enum xenbus_state (xen/io/xenbus.h).
type State int

// XenBus states.
const (
	Unknown       State = 0 // also: the state node is missing
	Initialising  State = 1
	InitWait      State = 2
	Initialised   State = 3
	Connected     State = 4
	Closing       State = 5
	Closed        State = 6
	Reconfiguring State = 7
	Reconfigured  State = 8
)

var stateNames = [...]string{"Unknown", "Initialising", "InitWait", "Initialised", "Connected", "Closing", "Closed", "Reconfiguring", "Reconfigured"}

func (s State) String() string {
	if s >= 0 && int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// ErrBadState: a state node holding something that is not a state.
var ErrBadState = errors.New("xenbus: malformed state")

// ReadState reads dir/state; a missing node is Unknown, as Linux reads it.
// Anything but canonical decimal 0..8 is ErrBadState.
func ReadState(h xs.Handle, dir string) (State, error) {
	v, err := h.ReadString(dir + "/state")
	if errors.Is(err, xs.ENOENT) {
		return Unknown, nil
	}
	if err != nil {
		return Unknown, err
	}
	n, err := strconv.ParseUint(v, 10, 8)
	if err != nil || n > uint64(Reconfigured) || v != strconv.FormatUint(n, 10) {
		return Unknown, fmt.Errorf("%w: %s/state = %q", ErrBadState, dir, v)
	}
	return State(n), nil
}

// WriteState writes dir/state in canonical decimal.
func WriteState(h xs.Handle, dir string, s State) error {
	return h.WriteString(dir+"/state", strconv.Itoa(int(s)))
}

// Paths of one vusb device, libxl's layout (usbif-protocol.md §2.1).
type Paths struct {
	Frontend string // /local/domain/F/device/vusb/D
	Backend  string // /local/domain/B/backend/<vusb|qusb>/F/D
	FrontDom uint32
	BackDom  uint32
	DevID    uint32
}

// NewPaths returns the paths libxl uses; kind is "vusb" (pv) or "qusb".
func NewPaths(frontDom, backDom, devid uint32, kind string) Paths {
	return Paths{
		Frontend: fmt.Sprintf("/local/domain/%d/device/vusb/%d", frontDom, devid),
		Backend:  fmt.Sprintf("/local/domain/%d/backend/%s/%d/%d", backDom, kind, frontDom, devid),
		FrontDom: frontDom, BackDom: backDom, DevID: devid,
	}
}

// errorPath is where xenbus_dev_fatal writes: error/<node path relative
// to the domain home>/error, in the domain of the node.
func errorPath(dir string) string {
	// /local/domain/N/device/vusb/D -> /local/domain/N/error/device/vusb/D/error
	parts := strings.SplitN(strings.TrimPrefix(dir, "/"), "/", 4)
	if len(parts) < 4 || parts[0] != "local" || parts[1] != "domain" {
		return dir + "/error"
	}
	return "/local/domain/" + parts[2] + "/error/" + parts[3] + "/error"
}

// Fatal reports a fault the way xenbus_dev_fatal does: it writes
// "<positive errno> <message>" to the error node and switches dir to
// Closing.
func Fatal(h xs.Handle, dir string, errno int, format string, args ...any) error {
	msg := fmt.Sprintf("%d %s", errno, fmt.Sprintf(format, args...))
	werr := h.WriteString(errorPath(dir), msg)
	if err := WriteState(h, dir, Closing); err != nil {
		return errors.Join(werr, err)
	}
	return werr
}

// Errnos written with Fatal.
const (
	EINVAL    = 22
	ENODEV    = 19
	ETIMEDOUT = 110
	EPROTO    = 71
)

// FaultError is a handshake that failed: what the machine wrote to the
// error node.
type FaultError struct {
	Dir   string
	Errno int
	Msg   string
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("xenbus %s: %s (errno %d)", e.Dir, e.Msg, e.Errno)
}

// Key names a port of this device as rules do: "domid:devid:port".
func (p Paths) Key(port uint8) string { return fmt.Sprintf("%d:%d:%d", p.FrontDom, p.DevID, port) }

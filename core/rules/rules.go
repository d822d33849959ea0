// Package rules is the backend's configuration: rules.toml, decoded
// strictly (an unknown key is an error naming its line), and the port
// rules "<busid>:<domid>:<vusb>:<port>" that put a device on a vusb port.
package rules

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/pvusb/pvusb/core/usbif"
)

// Rule puts one device on one port of one vusb.
type Rule struct {
	// Device is a host busid ("1-2.3") or an emulated device
	// ("emu-msc:/path/disk.img"); empty when matching by VID:PID.
	Device string
	VID    uint16 // with PID, when matching by identity instead of busid
	PID    uint16
	Serial string // optional, with VID:PID
	Dom    uint32
	VUSB   uint32
	Port   uint8 // 1..31
}

// Key names the port a rule fills: "domid:vusb:port".
func (r Rule) Key() string { return fmt.Sprintf("%d:%d:%d", r.Dom, r.VUSB, r.Port) }

// String is the rule in the form Parse reads.
func (r Rule) String() string {
	dev := r.Device
	if dev == "" {
		dev = fmt.Sprintf("%04x:%04x", r.VID, r.PID)
		if r.Serial != "" {
			dev += "/" + r.Serial
		}
	}
	return dev + ":" + r.Key()
}

// Emulated reports a pseudo-busid ("emu-…:…") and splits it into kind
// ("msc") and argument ("/path/disk.img").
func (r Rule) Emulated() (kind, arg string, ok bool) {
	rest, ok := strings.CutPrefix(r.Device, "emu-")
	if !ok {
		return "", "", false
	}
	kind, arg, _ = strings.Cut(rest, ":")
	return kind, arg, true
}

var busidRE = regexp.MustCompile(`^[0-9]+-[0-9]+(\.[0-9]+)*$`)

// Parse reads "<busid>:<domid>:<vusb>:<port>" (e.g. "1-2.3:1:0:3"). The
// device part may itself hold colons ("emu-msc:/img:1:0:1"): the last
// three fields are the numbers.
func Parse(s string) (Rule, error) {
	f := strings.Split(s, ":")
	if len(f) < 4 {
		return Rule{}, fmt.Errorf("rule %q: want <busid>:<domid>:<vusb>:<port>", s)
	}
	n := len(f)
	dev := strings.Join(f[:n-3], ":")
	dom, err1 := strconv.ParseUint(f[n-3], 10, 16)
	vusb, err2 := strconv.ParseUint(f[n-2], 10, 32)
	port, err3 := strconv.ParseUint(f[n-1], 10, 8)
	if err := errors.Join(err1, err2, err3); err != nil {
		return Rule{}, fmt.Errorf("rule %q: domid, vusb and port must be numbers", s)
	}
	if port < 1 || port > usbif.MaxPorts {
		return Rule{}, fmt.Errorf("rule %q: port %d outside 1..%d", s, port, usbif.MaxPorts)
	}
	r := Rule{Device: dev, Dom: uint32(dom), VUSB: uint32(vusb), Port: uint8(port)}
	if _, arg, ok := r.Emulated(); ok {
		if arg == "" {
			return Rule{}, fmt.Errorf("rule %q: emulated device without its argument (emu-msc:/path/disk.img)", s)
		}
	} else if !busidRE.MatchString(dev) {
		return Rule{}, fmt.Errorf("rule %q: %q is not a busid like 1-2.3 nor emu-<kind>:<arg>", s, dev)
	}
	return r, nil
}

// ParseKey reads "domid:vusb:port", the form `vportctl del` accepts.
func ParseKey(s string) (dom, vusb uint32, port uint8, err error) {
	r, err := Parse("1-1:" + s)
	return r.Dom, r.VUSB, r.Port, err
}

// Controller is one vusb the backend owns.
type Controller struct {
	Domid  uint32 `toml:"domid"`
	Devid  uint32 `toml:"devid"`
	Ports  int    `toml:"ports"`
	USBVer int    `toml:"usb-ver"`
	// Create: the backend writes the frontend and backend nodes as libxl
	// does. false: they come from xl (usbctrl = ["type=pv,…"]).
	Create bool `toml:"create"`
}

// Match puts a device found by identity on a port.
type Match struct {
	VIDPID string `toml:"vidpid"` // "0781:5567"
	Serial string `toml:"serial"`
	Domid  uint32 `toml:"domid"`
	VUSB   uint32 `toml:"vusb"`
	Port   uint8  `toml:"port"`
}

// Config is rules.toml.
type Config struct {
	// Sim is the simulated hypervisor's directory; empty for real Xen.
	Sim string `toml:"sim"`
	// Control is the control socket vportctl talks to.
	Control string `toml:"control"`
	// BackendType is the XenStore device class of our backend dirs:
	// "vusb" (libxl's type=pv, the default).
	BackendType string `toml:"backend-type"`
	// Adopt: also serve controllers the toolstack creates for any guest
	// (xl's usbctrl = ["type=pv,…"]); rules may name their ports ahead.
	Adopt       bool         `toml:"adopt"`
	Controllers []Controller `toml:"controller"`
	Rules       []string     `toml:"rules"`
	Matches     []Match      `toml:"match"`

	// Parsed: the rules and matches as Rule values.
	Parsed []Rule `toml:"-"`
}

// DefaultControl is the control socket when rules.toml names none.
const DefaultControl = "/run/pvusb/usbback.sock"

// Load reads and checks rules.toml.
func Load(path string) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := Decode(string(src))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Decode parses rules.toml text: unknown keys are errors with their line.
func Decode(src string) (*Config, error) {
	var c Config
	md, err := toml.Decode(src, &c)
	if err != nil {
		return nil, err
	}
	if und := md.Undecoded(); len(und) > 0 {
		var errs []error
		for _, k := range und {
			errs = append(errs, fmt.Errorf("line %d: unknown key %q", lineOf(src, k), k.String()))
		}
		return nil, errors.Join(errs...)
	}
	if c.Control == "" {
		c.Control = DefaultControl
	}
	if c.BackendType == "" {
		c.BackendType = "vusb"
	}
	if c.BackendType != "vusb" && c.BackendType != "qusb" {
		return nil, fmt.Errorf("backend-type %q: want vusb or qusb", c.BackendType)
	}
	seen := map[[2]uint32]bool{}
	for i := range c.Controllers {
		ct := &c.Controllers[i]
		if ct.Ports == 0 {
			ct.Ports = 8 // libxl's default
		}
		if ct.USBVer == 0 {
			ct.USBVer = 2
		}
		switch {
		case ct.Ports < 1 || ct.Ports > usbif.MaxPorts:
			return nil, fmt.Errorf("controller dom%d/%d: ports %d outside 1..%d", ct.Domid, ct.Devid, ct.Ports, usbif.MaxPorts)
		case ct.USBVer != 1 && ct.USBVer != 2:
			return nil, fmt.Errorf("controller dom%d/%d: usb-ver %d (1 or 2)", ct.Domid, ct.Devid, ct.USBVer)
		case ct.Domid == 0:
			return nil, fmt.Errorf("controller dom0/%d: a guest domain is needed", ct.Devid)
		case seen[[2]uint32{ct.Domid, ct.Devid}]:
			return nil, fmt.Errorf("controller dom%d/%d: listed twice", ct.Domid, ct.Devid)
		}
		seen[[2]uint32{ct.Domid, ct.Devid}] = true
	}
	ports := map[string]bool{}
	add := func(r Rule) error {
		if ct := c.Controller(r.Dom, r.VUSB); ct == nil && !c.Adopt {
			return fmt.Errorf("rule %s: no controller dom%d/%d in rules.toml (or adopt = true)", r, r.Dom, r.VUSB)
		} else if ct != nil && int(r.Port) > ct.Ports {
			return fmt.Errorf("rule %s: port %d of a %d-port controller", r, r.Port, ct.Ports)
		}
		if ports[r.Key()] {
			return fmt.Errorf("rule %s: port %s is already taken by another rule", r, r.Key())
		}
		ports[r.Key()] = true
		c.Parsed = append(c.Parsed, r)
		return nil
	}
	for _, s := range c.Rules {
		r, err := Parse(s)
		if err != nil {
			return nil, err
		}
		if err := add(r); err != nil {
			return nil, err
		}
	}
	for _, m := range c.Matches {
		vid, pid, ok := strings.Cut(m.VIDPID, ":")
		v, e1 := strconv.ParseUint(vid, 16, 16)
		p, e2 := strconv.ParseUint(pid, 16, 16)
		if !ok || e1 != nil || e2 != nil || len(vid) != 4 || len(pid) != 4 {
			return nil, fmt.Errorf("match vidpid %q: want four hex digits each, like 0781:5567", m.VIDPID)
		}
		if m.Port < 1 || m.Port > usbif.MaxPorts {
			return nil, fmt.Errorf("match %s: port %d outside 1..%d", m.VIDPID, m.Port, usbif.MaxPorts)
		}
		if err := add(Rule{VID: uint16(v), PID: uint16(p), Serial: m.Serial, Dom: m.Domid, VUSB: m.VUSB, Port: m.Port}); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// Controller finds a controller by domain and devid.
func (c *Config) Controller(dom, devid uint32) *Controller {
	for i := range c.Controllers {
		if c.Controllers[i].Domid == dom && c.Controllers[i].Devid == devid {
			return &c.Controllers[i]
		}
	}
	return nil
}

// lineOf finds the line of a key in the source: the last line that
// assigns or opens it (keys carry no position in the decoder's metadata).
func lineOf(src string, k toml.Key) int {
	name := regexp.QuoteMeta(k[len(k)-1])
	re := regexp.MustCompile(`^\s*(\[\[?\s*)?("?` + name + `"?)\s*(=|\]|\.)`)
	line := 0
	for i, l := range strings.Split(src, "\n") {
		if re.MatchString(l) {
			line = i + 1
		}
	}
	return line
}

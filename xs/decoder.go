package xs

import (
	"errors"
	"fmt"
	"strings"
)

// Decoder reads typed nodes below one directory with a sticky error: after
// the first failure every call is a no-op and Err reports that failure, so
// a reader of many nodes checks once.
//
//	d := xs.NewDecoder(c.Handle, backendDir)
//	ports := d.Uint("num-ports", 1, 31)
//	ver := d.Uint("usb-ver", 1, 2)
//	if err := d.Err(); err != nil { … }
//
// Values are read once and parsed strictly: canonical decimal only, as the
// peers write them ("%d"/"%u").
type Decoder struct {
	h   Handle
	dir string
	err error
}

// NewDecoder reads nodes below dir through h.
func NewDecoder(h Handle, dir string) *Decoder {
	return &Decoder{h: h, dir: strings.TrimSuffix(dir, "/")}
}

// Err is the first failure, naming the node.
func (d *Decoder) Err() error { return d.err }

func (d *Decoder) path(name string) string { return d.dir + "/" + name }

// String reads a node's value.
func (d *Decoder) String(name string) string {
	if d.err != nil {
		return ""
	}
	v, err := d.h.Read(d.path(name))
	if err != nil {
		d.err = err
		return ""
	}
	return string(v)
}

// OptionalString reads a node, giving def when it does not exist.
func (d *Decoder) OptionalString(name, def string) string {
	if d.err != nil {
		return ""
	}
	v, err := d.h.Read(d.path(name))
	if errors.Is(err, ENOENT) {
		return def
	}
	if err != nil {
		d.err = err
		return ""
	}
	return string(v)
}

// Uint reads a decimal node and checks min <= v <= max.
func (d *Decoder) Uint(name string, min, max uint64) uint64 {
	s := d.String(name)
	if d.err != nil {
		return 0
	}
	v, err := parseUint(s, max)
	if err == nil && v < min {
		err = fmt.Errorf("%d is below %d", v, min)
	}
	if err != nil {
		d.err = fmt.Errorf("xenstore node %s: %w", d.path(name), err)
		return 0
	}
	return v
}

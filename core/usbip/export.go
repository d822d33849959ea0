package usbip

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/pvusb/pvusb/core/usbdesc"
	"github.com/pvusb/pvusb/core/usbif"
)

// Exported is a device offered to USB/IP clients.
type Exported struct {
	Dev    Device
	Target Target
	busy   bool
}

// Exporter is a USB/IP server (what usbipd is on Linux): clients list the
// devices and import one; an imported device serves that connection until
// it closes. Devices come and go as the vusb ports do. Safe for
// concurrent use.
type Exporter struct {
	Log *slog.Logger

	mu   sync.Mutex
	devs map[string]*Exported
}

// Set offers a device under its busid (replacing one of the same busid).
func (e *Exporter) Set(x Exported) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.devs == nil {
		e.devs = map[string]*Exported{}
	}
	e.devs[x.Dev.Busid] = &x
}

// Remove withdraws a device; a connection using it ends when its URBs fail.
func (e *Exporter) Remove(busid string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.devs, busid)
}

// List returns the offered devices by busid.
func (e *Exporter) List() []Device {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Device
	for _, x := range e.devs {
		out = append(out, x.Dev)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Busid < out[j].Busid })
	return out
}

// Serve accepts clients until ctx ends.
func (e *Exporter) Serve(ctx context.Context, l net.Listener) error {
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go e.serveConn(ctx, c)
	}
}

// opTimeout bounds the operations phase: a client that connects and says
// nothing is dropped.
const opTimeout = 10 * time.Second

func (e *Exporter) serveConn(ctx context.Context, c net.Conn) {
	log := e.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(opTimeout))
	h, err := ReadOpHeader(c)
	if err != nil {
		return
	}
	switch h.Code {
	case OpReqDevlist:
		devs := e.List()
		b := OpHeader{Version: Version, Code: OpRepDevlist, Status: StOK}.Encode()
		b = be.AppendUint32(b, uint32(len(devs)))
		for _, d := range devs {
			b = append(b, d.Encode(true)...)
		}
		c.Write(b)
	case OpReqImport:
		var busid [BusidSize]byte
		if _, err := io.ReadFull(c, busid[:]); err != nil {
			return
		}
		name := cString(busid[:])
		e.mu.Lock()
		x := e.devs[name]
		st := uint32(StOK)
		switch {
		case x == nil:
			st = StNoDev
		case x.busy:
			st = StBusy
		default:
			x.busy = true
		}
		e.mu.Unlock()
		c.Write(OpHeader{Version: Version, Code: OpRepImport, Status: st}.Encode())
		if st != StOK {
			return
		}
		defer func() {
			e.mu.Lock()
			x.busy = false
			e.mu.Unlock()
		}()
		c.Write(x.Dev.Encode(false))
		c.SetDeadline(time.Time{})
		log.Info("usbip: device imported", "busid", name, "client", c.RemoteAddr().String())
		if err := Serve(ctx, c, x.Target, log); err != nil {
			log.Warn("usbip: connection ended", "busid", name, "err", err)
		}
	default:
		log.Warn("usbip: unknown operation", "code", fmt.Sprintf("%#x", h.Code))
	}
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// Describe makes a device record from what enumeration read: busid names
// it for clients ("<devid>-<port>", the shape of a Linux busid), speed is
// usbif's (the same numbers as Linux's usb_device_speed).
func Describe(busid string, busnum, devnum uint32, speed usbif.Speed, d usbdesc.Device, c usbdesc.Config) Device {
	dev := Device{Path: "/sys/devices/pvusb/" + busid, Busid: busid, Busnum: busnum, Devnum: devnum, Speed: uint32(speed),
		VID: d.VID, PID: d.PID, BCDDevice: d.BCDDevice, Class: d.Class, SubClass: d.SubClass, Protocol: d.Protocol,
		ConfigValue: c.Value, NumConfigs: d.NumConfigs}
	for _, it := range c.Interfaces {
		if it.Alt == 0 {
			dev.Interfaces = append(dev.Interfaces, Interface{it.Class, it.SubClass, it.Protocol})
		}
	}
	return dev
}

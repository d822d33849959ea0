package usbback

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvusb/pvusb/core/backend/fronttest"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/sim"
	"github.com/pvusb/pvusb/core/sim/simtest"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/stub"
	"github.com/pvusb/pvusb/stub/usbfs"
	"github.com/pvusb/pvusb/xs"
)

// fakeHost is a host whose USB devices the test plugs and unplugs. Its
// devices answer GET_DESCRIPTOR and hold bulk transfers until they leave,
// as a real device does when pulled mid-transfer.
type fakeHost struct {
	mu      sync.Mutex
	present map[string]stub.Identity // busid -> identity
	open    map[string]*hostDev
}

type hostDev struct {
	id     stub.Identity
	mu     sync.Mutex
	held   []*stub.Transfer
	gone   func()
	closed bool
}

func (h *fakeHost) Open(device string, gone func()) (stub.Device, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	id, ok := h.present[device]
	if !ok {
		return nil, fmt.Errorf("usb %s: no such device: %w", device, os.ErrNotExist)
	}
	d := &hostDev{id: id, gone: gone}
	h.open[device] = d
	return d, nil
}

func (h *fakeHost) Find(vid, pid uint16, serial string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for b, id := range h.present {
		if id.VID == vid && id.PID == pid && (serial == "" || serial == id.Serial) {
			return b, nil
		}
	}
	return "", os.ErrNotExist
}

func (h *fakeHost) plug(busid string, id stub.Identity) {
	h.mu.Lock()
	h.present[busid] = id
	h.mu.Unlock()
}

// pull removes a device: whatever it holds completes with -ENODEV, then
// its owner is told, as usbfs does.
func (h *fakeHost) pull(busid string) {
	h.mu.Lock()
	delete(h.present, busid)
	d := h.open[busid]
	delete(h.open, busid)
	h.mu.Unlock()
	if d == nil {
		return
	}
	d.mu.Lock()
	held := d.held
	d.held = nil
	d.mu.Unlock()
	for _, t := range held {
		t.Complete(usbif.StatusNoDev, 0)
	}
	go d.gone()
}

func (d *hostDev) desc() []byte {
	return []byte{18, 1, 0, 2, 0, 0, 0, 64, byte(d.id.VID), byte(d.id.VID >> 8), byte(d.id.PID), byte(d.id.PID >> 8), 0, 1, 0, 0, 0, 1}
}
func (d *hostDev) DeviceDescriptor() []byte { return d.desc() }
func (d *hostDev) Identity() stub.Identity  { return d.id }
func (d *hostDev) Speed() usbif.Speed       { return usbif.SpeedHigh }
func (d *hostDev) Submit(t *stub.Transfer) error {
	if t.Type == usbif.TypeCtrl {
		t.Complete(usbif.StatusOK, copy(t.Buffer, d.desc()))
		return nil
	}
	d.mu.Lock()
	d.held = append(d.held, t)
	d.mu.Unlock()
	return nil
}
func (d *hostDev) Cancel(t *stub.Transfer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, h := range d.held {
		if h == t {
			d.held = append(d.held[:i], d.held[i+1:]...)
			t.Complete(usbif.StatusConnReset, 0)
		}
	}
}
func (d *hostDev) Reset() error                    { return nil }
func (d *hostDev) SetConfiguration(uint8) error    { return nil }
func (d *hostDev) SetInterface(uint8, uint8) error { return nil }
func (d *hostDev) ClearHalt(uint8) error           { return nil }
func (d *hostDev) Close() error                    { d.mu.Lock(); d.closed = true; d.mu.Unlock(); return nil }

// The whole hot-plug story on the simulator: rules naming host devices
// that are not there yet (by busid and by VID:PID), the devices arriving
// (uevents), one pulled out during a transfer (the transfer answered
// before the speed-0 event), and coming back to the same port.
func TestHostDevicesFollowHotplug(t *testing.T) {
	h := simtest.Start(t)
	d0 := simtest.Join(t, h, 0)
	c0, err := xs.Dial(sim.XenStorePath(h.Dir(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	cfg, err := rules.Decode(`rules = ["3-1:1:0:2"]
[[controller]]
domid = 1
devid = 0
ports = 2
create = true
[[match]]
vidpid = "1234:5678"
serial = "S1"
domid = 1
vusb = 0
port = 1
`)
	if err != nil {
		t.Fatal(err)
	}
	host := &fakeHost{present: map[string]stub.Identity{}, open: map[string]*hostDev{}}
	s := New(cfg, Platform{XS: c0, Mapper: grant.NewSimMapper(d0), BackDom: 0,
		Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d0), nil }}, host, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	uevents := make(chan usbfs.Event, 4)
	go s.WatchHotplug(ctx, func(ctx context.Context) (usbfs.Event, error) {
		select {
		case ev := <-uevents:
			return ev, nil
		case <-ctx.Done():
			return usbfs.Event{}, ctx.Err()
		}
	})

	d1 := simtest.Join(t, h, 1)
	c1, err := xs.Dial(sim.XenStorePath(h.Dir(), 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	front, err := fronttest.Connect(ctx, d1, c1, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := xenbus.NewPaths(1, 0, 0, "vusb")

	node := func(port int) string {
		v, _ := c0.ReadString(fmt.Sprintf("%s/port/%d", p.Backend, port))
		return v
	}
	waitPorts := func(want string) {
		t.Helper()
		for i := 0; ; i++ {
			var got []string
			for _, pi := range s.List() {
				got = append(got, pi.State)
			}
			if strings.Join(got, " ") == want {
				return
			}
			if i > 500 {
				t.Fatalf("ports %v, want %s", got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitPorts("empty empty")
	if node(1) != "" || node(2) != "3-1" {
		t.Fatalf("nodes before the devices: %q %q", node(1), node(2))
	}

	// A device with the right VID:PID but another serial does not match.
	host.plug("3-3", stub.Identity{VID: 0x1234, PID: 0x5678, Serial: "OTHER"})
	host.plug("3-1", stub.Identity{VID: 0xabcd, PID: 0x0001, Product: "Busid Stick"})
	uevents <- usbfs.Event{Action: "add", Busid: "3-1"}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 2 || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("busid rule: %+v %v", ev, err)
	}
	host.plug("3-4", stub.Identity{VID: 0x1234, PID: 0x5678, Serial: "S1", Product: "Matched Stick"})
	uevents <- usbfs.Event{Action: "add", Busid: "3-4"}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 1 || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("VID:PID match: %+v %v", ev, err)
	}
	if node(1) != "3-4" {
		t.Fatalf("port/1 = %q, want the matched busid", node(1))
	}
	ports := s.List()
	if ports[0].Product != "Matched Stick" || ports[0].VIDPID != "1234:5678" || ports[1].Product != "Busid Stick" {
		t.Fatalf("list: %+v", ports)
	}

	// Address port 2's device and start a bulk IN it holds, then pull it.
	if rsp, got, err := front.Control(ctx, 2, 0, usbif.SetupPacket{RequestType: 0x80, Request: usbif.ReqGetDescriptor, Value: 0x100, Length: 18}, nil); err != nil || rsp.Status != 0 || got[8] != 0xcd {
		t.Fatalf("GET_DESCRIPTOR at address 0: %+v %v", rsp, err)
	}
	if rsp, _, err := front.Control(ctx, 2, 0, usbif.SetupPacket{Request: usbif.ReqSetAddress, Value: 5}, nil); err != nil || rsp.Status != 0 {
		t.Fatalf("SET_ADDRESS: %+v %v", rsp, err)
	}
	buf, _ := front.NewBuffer(512, true)
	id, _ := front.AllocID()
	q := fronttest.Request(id, usbif.NewPipe(2, 5, 1, true, usbif.TypeBulk), buf)
	if err := front.Submit(&q); err != nil {
		t.Fatal(err)
	}
	for i := 0; s.List()[1].InFlight != 1; i++ {
		if i > 500 {
			t.Fatal("transfer never reached the device")
		}
		time.Sleep(10 * time.Millisecond)
	}
	host.pull("3-1")
	rsp, err := front.Wait(ctx, id)
	if err != nil || rsp.Status != usbif.StatusNoDev {
		t.Fatalf("in-flight URB of the pulled device: %+v %v", rsp, err)
	}
	if err := buf.End(); err != nil {
		t.Fatal(err)
	}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 2 || ev.Speed != usbif.SpeedNone {
		t.Fatalf("pulled device: %+v %v", ev, err)
	}
	waitPorts("plugged empty")
	if node(2) != "3-1" {
		t.Fatalf("port/2 = %q: the assignment outlives the device", node(2))
	}
	// It comes back to the same port.
	host.plug("3-1", stub.Identity{VID: 0xabcd, PID: 0x0001})
	uevents <- usbfs.Event{Action: "add", Busid: "3-1"}
	if ev, err := front.ConnEvent(ctx); err != nil || ev.Port != 2 || ev.Speed != usbif.SpeedHigh {
		t.Fatalf("device back: %+v %v", ev, err)
	}
	cancel()
	<-done
}

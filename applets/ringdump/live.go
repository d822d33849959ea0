package ringdump

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/ringview"
	"github.com/pvusb/pvusb/core/usbif"
	"github.com/pvusb/pvusb/core/xenbus"
	"github.com/pvusb/pvusb/ring"
	"github.com/pvusb/pvusb/xs"
)

// liveConfig says how to show a running vusb.
type liveConfig struct {
	json     bool
	watch    bool
	interval time.Duration
	frames   int // with watch: stop after this many frames (0 = until interrupted)
}

// pageSource yields copies of the two live ring pages.
type pageSource interface {
	// Snapshot copies the urb and conn ring pages into dst (2 pages).
	Snapshot(dst []byte)
	NumPorts() int
	Describe() string
	Close() error
}

// xenSource maps a frontend's two ring pages read-only through gntdev:
// we only look, so the peers can never see a write from us.
type xenSource struct {
	m     *grant.XenMapper
	mp    grant.Mapping
	ports int
	desc  string
}

func openXenSource(domid, devid uint32) (*xenSource, error) {
	c, err := xs.Open()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	fe := fmt.Sprintf("/local/domain/%d/device/vusb/%d", domid, devid)
	d := xs.NewDecoder(c.Handle, fe)
	urb := d.Uint("urb-ring-ref", 0, 1<<32-1)
	conn := d.Uint("conn-ring-ref", 0, 1<<32-1)
	be := d.String("backend")
	if err := d.Err(); err != nil {
		return nil, fmt.Errorf("dom%d vusb %d is not connected: %w", domid, devid, err)
	}
	ports := usbif.MaxPorts
	if cfg, err := xenbus.ReadBackendConfig(c.Handle, be); err == nil {
		ports = cfg.NumPorts
	}
	m, err := grant.OpenXenMapper()
	if err != nil {
		return nil, err
	}
	mp, err := m.Map(domid, []grant.Ref{grant.Ref(urb), grant.Ref(conn)}, false)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("map the rings of dom%d vusb %d read-only: %w", domid, devid, err)
	}
	return &xenSource{m: m, mp: mp, ports: ports,
		desc: fmt.Sprintf("dom%d vusb %d: urb-ring-ref %d, conn-ring-ref %d, mapped read-only, num-ports %d", domid, devid, urb, conn, ports)}, nil
}

func (x *xenSource) Snapshot(dst []byte) { copy(dst, x.mp.Bytes()) }
func (x *xenSource) NumPorts() int       { return x.ports }
func (x *xenSource) Describe() string    { return x.desc }
func (x *xenSource) Close() error {
	err := x.mp.Unmap()
	x.m.Close()
	return err
}

// liveDump is the JSON of one live frame: both rings.
type liveDump struct {
	URB  *ringview.Dump `json:"urb"`
	Conn *ringview.Dump `json:"conn"`
}

// runLive prints the two rings once, or with watch a new frame each time
// the pages change (checked every interval).
func runLive(ctx context.Context, w io.Writer, src pageSource, cfg liveConfig) error {
	snap := make([]byte, 2*ring.PageSize)
	var last []byte
	frames := 0
	tick := time.NewTicker(max(cfg.interval, 10*time.Millisecond))
	defer tick.Stop()
	for {
		src.Snapshot(snap)
		if last == nil || !bytes.Equal(snap, last) {
			last = append(last[:0], snap...)
			frames++
			if err := printFrame(w, src, snap, cfg, frames); err != nil {
				return err
			}
			if !cfg.watch || (cfg.frames > 0 && frames >= cfg.frames) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func printFrame(w io.Writer, src pageSource, snap []byte, cfg liveConfig, n int) error {
	urb, err := ringview.Analyze(snap[:ring.PageSize], ringview.KindURB, src.NumPorts())
	if err != nil {
		return err
	}
	conn, err := ringview.Analyze(snap[ring.PageSize:], ringview.KindConn, src.NumPorts())
	if err != nil {
		return err
	}
	if cfg.json {
		b, err := json.Marshal(liveDump{URB: urb, Conn: conn})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var b strings.Builder
	if cfg.watch {
		fmt.Fprintf(&b, "=== frame %d at %s ===\n", n, time.Now().Format("15:04:05.000"))
	}
	fmt.Fprintf(&b, "%s\n", src.Describe())
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}
	if err := urb.WriteText(w, "live"); err != nil {
		return err
	}
	return conn.WriteText(w, "live")
}

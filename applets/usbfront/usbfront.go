// Package usbfront is the `pvusb usbfront` applet: the guest side of a
// vusb, and `usbfront list`.
package usbfront

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/core/ctlsock"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/frontend"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/sim"
	svc "github.com/pvusb/pvusb/core/usbfront"
	"github.com/pvusb/pvusb/core/usbip"
	"github.com/pvusb/pvusb/xs"
)

// Config is what the flags say.
type Config struct {
	Sim     string // the simulator's directory; "" for real Xen
	Dom     uint32 // our domain on the simulator
	BackDom uint32
	DevID   uint32
	Export  string // "tcp:HOST:PORT" or ""
	VHCI    string // auto, on, off
	Capture string // directory for vhci-hcd connection captures
	Control string
	Debug   bool
}

func controlPath(devid uint32) string { return fmt.Sprintf("/run/pvusb/usbfront-%d.sock", devid) }

// Command returns the applet.
func Command() *cli.Command {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "sim", Usage: "join the simulated hypervisor in `DIR` (pvusb sim --dir DIR); default: real Xen"},
		&cli.UintFlag{Name: "domid", Value: 1, Usage: "our domain on the simulator (on Xen XenStore says)"},
		&cli.UintFlag{Name: "backend-domid", Usage: "the backend's domain"},
		&cli.UintFlag{Name: "devid", Usage: "the vusb's device id"},
		&cli.StringFlag{Name: "export", Usage: "also serve the devices to USB/IP clients at `tcp:HOST:PORT` (usbip list -r, usbip attach)"},
		&cli.StringFlag{Name: "vhci", Value: "auto", Usage: "hand devices to the kernel's vhci-hcd: auto (when loaded), on, off"},
		&cli.StringFlag{Name: "control", Usage: "control socket (default /run/pvusb/usbfront-DEVID.sock)"},
		&cli.StringFlag{Name: "capture", Usage: "keep the first 64 KiB each way of every vhci-hcd connection in `DIR` (BUSID.cmd, BUSID.ret) for bug reports and tests"},
		&cli.BoolFlag{Name: "debug", Usage: "log at debug level"},
	}
	cfgOf := func(c *cli.Context) Config {
		cfg := Config{Sim: c.String("sim"), Dom: uint32(c.Uint("domid")), BackDom: uint32(c.Uint("backend-domid")),
			DevID: uint32(c.Uint("devid")), Export: c.String("export"), VHCI: c.String("vhci"), Capture: c.String("capture"), Control: c.String("control"), Debug: c.Bool("debug")}
		if cfg.Control == "" {
			cfg.Control = controlPath(cfg.DevID)
		}
		return cfg
	}
	return help.WithExamples(&cli.Command{
		Name:  "usbfront",
		Usage: "guest side of a vusb: a virtual USB 2.0 controller whose devices the guest's own drivers use",
		Description: "Connects to the vusb's backend (pvusb usbback, QEMU's qusb, or any usbif backend),\n" +
			"emulates its root hub, resets and enumerates each device that is plugged in, and\n" +
			"hands it to the guest kernel through vhci-hcd (USB/IP): usb-storage, usbhid or cdc-acm\n" +
			"then bind as for a local device. --export serves the same devices to USB/IP clients.\n" +
			"It comes back when the backend restarts; SIGINT/SIGTERM close the vusb cleanly.",
		Flags: flags,
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Run(ctx, c.App.ErrWriter, cfgOf(c), nil)
		},
		Subcommands: []*cli.Command{{
			Name:  "list",
			Usage: "the vusb's ports and devices, like lsusb (asks the running usbfront)",
			Flags: []cli.Flag{
				&cli.UintFlag{Name: "devid", Usage: "the vusb's device id"},
				&cli.StringFlag{Name: "control", Usage: "control socket (default /run/pvusb/usbfront-DEVID.sock)"},
				&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			},
			Action: func(c *cli.Context) error {
				path := c.String("control")
				if path == "" {
					path = controlPath(uint32(c.Uint("devid")))
				}
				var rsp svc.Response
				if err := ctlsock.Call(path, svc.Request{Op: "list"}, &rsp); err != nil {
					return fmt.Errorf("usbfront: %w", err)
				}
				if rsp.Error != "" {
					return errors.New(rsp.Error)
				}
				return printList(c.App.Writer, rsp, c.Bool("json"))
			},
		}},
	},
		"pvusb usbfront --backend-domid 0 --devid 0",
		"pvusb usbfront --sim /run/pvusb-sim --domid 1 --export tcp:127.0.0.1:3240",
		"pvusb usbfront list",
		"usbip --tcp-port 3240 list -r 127.0.0.1      # what --export offers",
	)
}

// Run serves until ctx ends; ready, if set, is called with the service
// once it runs.
func Run(ctx context.Context, logw io.Writer, cfg Config, ready func(*svc.Service)) error {
	level := slog.LevelInfo
	if cfg.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level}))
	p, closeAll, err := platform(cfg)
	if err != nil {
		return err
	}
	defer closeAll()
	sc := svc.Config{BackDom: cfg.BackDom, DevID: cfg.DevID, Log: log, Poll: frontend.DefaultPoll, Capture: cfg.Capture}
	if cfg.Capture != "" {
		if err := os.MkdirAll(cfg.Capture, 0o755); err != nil {
			return fmt.Errorf("usbfront: --capture: %w", err)
		}
	}
	switch cfg.VHCI {
	case "on", "auto":
		v := usbip.DefaultVHCI
		if _, err := v.Ports(); err != nil {
			if cfg.VHCI == "on" {
				return err
			}
			log.Info("usbfront: no vhci-hcd; devices are not handed to this kernel", "err", err)
		} else {
			sc.VHCI = &v
		}
	case "off":
	default:
		return fmt.Errorf("--vhci %q: auto, on or off", cfg.VHCI)
	}
	var exl net.Listener
	if cfg.Export != "" {
		addr, err := svc.ExportAddr(cfg.Export)
		if err != nil {
			return err
		}
		if exl, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("--export: %w", err)
		}
		sc.Exporter = &usbip.Exporter{Log: log}
	}
	s := svc.New(sc, p)
	ctl, err := ctlsock.Listen(cfg.Control)
	if err != nil {
		return err
	}
	go s.Serve(ctx, ctl)
	if exl != nil {
		go sc.Exporter.Serve(ctx, exl)
		log.Info("usbfront: exporting over USB/IP", "addr", exl.Addr().String())
	}
	log.Info("usbfront: serving", "dom", p.Dom, "backend-dom", cfg.BackDom, "devid", cfg.DevID, "sim", cfg.Sim, "control", cfg.Control)
	if ready != nil {
		ready(s)
	}
	return s.Run(ctx)
}

// platform joins the simulator, or opens real Xen's device files; on Xen
// our domid is XenStore's "domid" node (read relative to our home).
func platform(cfg Config) (svc.Platform, func(), error) {
	if cfg.Sim != "" {
		d, err := sim.Join(cfg.Sim, cfg.Dom)
		if err != nil {
			return svc.Platform{}, nil, err
		}
		c, err := xs.Dial(d.XenStorePath())
		if err != nil {
			d.Close()
			return svc.Platform{}, nil, err
		}
		return svc.Platform{XS: c, Granter: grant.NewSimGranter(d), Dom: cfg.Dom,
				Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d), nil }},
			func() { c.Close(); d.Close() }, nil
	}
	c, err := xs.Open()
	if err != nil {
		return svc.Platform{}, nil, fmt.Errorf("real Xen: %w (--sim DIR for the simulator)", err)
	}
	v, err := c.ReadString("domid")
	if err != nil {
		c.Close()
		return svc.Platform{}, nil, fmt.Errorf("our domid (XenStore domid): %w", err)
	}
	dom, err := strconv.ParseUint(strings.TrimSpace(v), 10, 16)
	if err != nil {
		c.Close()
		return svc.Platform{}, nil, fmt.Errorf("our domid %q: %w", v, err)
	}
	g, err := grant.OpenXenGranter()
	if err != nil {
		c.Close()
		return svc.Platform{}, nil, err
	}
	return svc.Platform{XS: c, Granter: g, Dom: uint32(dom), Events: func() (evtchn.Channels, error) { return evtchn.OpenXen() }},
		func() { g.Close(); c.Close() }, nil
}

func printList(w io.Writer, rsp svc.Response, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rsp)
	}
	if len(rsp.Ports) == 0 {
		fmt.Fprintln(w, "not connected")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tSPEED\tADDR\tID\tCLASS\tDEVICE\tEXPOSED")
	for _, p := range rsp.Ports {
		if p.Speed == "" {
			fmt.Fprintf(tw, "%d\t-\t-\t-\t-\t(empty)\t-\n", p.Port)
			continue
		}
		name := strings.TrimSpace(p.Manufacturer + " " + p.Product)
		if p.Error != "" {
			name = "(" + p.Error + ")"
		}
		exposed := []string{}
		if p.Busid != "" {
			exposed = append(exposed, "usbip "+p.Busid)
		}
		if p.VHCIPort != nil {
			exposed = append(exposed, fmt.Sprintf("vhci port %d", *p.VHCIPort))
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\t%s\n", p.Port, p.Speed, p.Address, dash(p.VIDPID), dash(p.Class), dash(name), dash(strings.Join(exposed, ", ")))
		for _, it := range p.Interfaces {
			fmt.Fprintf(tw, "\t\t\t\t\t  interface %s\t\n", it)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if st := rsp.Stats; st != nil {
		fmt.Fprintf(w, "URBs %d submitted, %d completed, %d unlinked; %d bytes in, %d out; %d conn events\n",
			st.Submitted, st.Completed, st.Unlinks, st.BytesIn, st.BytesOut, st.ConnEvents)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Package usbback is the `pvusb usbback` applet: the dom0 backend daemon.
package usbback

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/core/evtchn"
	"github.com/pvusb/pvusb/core/grant"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/sim"
	svc "github.com/pvusb/pvusb/core/usbback"
	"github.com/pvusb/pvusb/stub/usbfs"
	"github.com/pvusb/pvusb/xs"
)

// Command returns the applet.
func Command() *cli.Command {
	return help.WithExamples(&cli.Command{
		Name:  "usbback",
		Usage: "dom0 backend daemon: serve USB devices to guests over PVUSB rings",
		Description: "Serves the vusb controllers of rules.toml: writes their XenStore nodes as libxl\n" +
			"does (or adopts a controller xl created), runs the backend XenBus handshake, maps the\n" +
			"rings and serves URBs to Linux xen-hcd (or any usbif frontend). Ports are filled by\n" +
			"the rules and live by `pvusb vportctl`. Devices: emulated disks (emu-msc:PATH) today;\n" +
			"host busids arrive with the usbfs layer. With sim = DIR in rules.toml it joins the\n" +
			"simulated hypervisor (pvusb sim --dir DIR) as dom0; otherwise it uses real Xen.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "/etc/pvusb/rules.toml", Usage: "rules.toml"},
			&cli.BoolFlag{Name: "debug", Usage: "log at debug level"},
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, c.App.ErrWriter, c.String("config"), c.Bool("debug"), nil)
		},
	},
		"pvusb usbback -c /etc/pvusb/rules.toml",
		"pvusb usbback -c testdata/rules/example.toml --debug",
	)
}

// run serves until ctx ends; ready, if set, is called once serving.
func run(ctx context.Context, logw io.Writer, path string, debug bool, ready func(*svc.Service)) error {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: level}))
	cfg, err := rules.Load(path)
	if err != nil {
		return err
	}
	p, closeAll, err := platform(cfg)
	if err != nil {
		return err
	}
	defer closeAll()
	s := svc.New(cfg, p, nil, log)
	l, err := svc.Listen(cfg.Control) // before ready: vportctl may call at once
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx, l) }()
	if m, err := usbfs.OpenMonitor(); err == nil {
		// Host devices come and go: rules naming them follow.
		defer m.Close()
		go func() {
			if err := s.WatchHotplug(ctx, m.Next); err != nil {
				log.Warn("usbback: hot-plug monitor stopped", "err", err)
			}
		}()
	} else {
		log.Info("usbback: no hot-plug monitor", "err", err)
	}
	log.Info("usbback: serving", "controllers", len(cfg.Controllers), "control", cfg.Control, "sim", cfg.Sim)
	if ready != nil {
		ready(s)
	}
	err = s.Run(ctx)
	if serr := <-errc; serr != nil {
		return serr
	}
	if err == context.Canceled {
		return nil
	}
	return err
}

// platform joins the simulator as dom0, or opens real Xen's device files.
func platform(cfg *rules.Config) (svc.Platform, func(), error) {
	if cfg.Sim != "" {
		d, err := sim.Join(cfg.Sim, 0)
		if err != nil {
			return svc.Platform{}, nil, err
		}
		c, err := xs.Dial(sim.XenStorePath(cfg.Sim, 0))
		if err != nil {
			d.Close()
			return svc.Platform{}, nil, err
		}
		m := grant.NewSimMapper(d)
		return svc.Platform{XS: c, Mapper: m, BackDom: 0,
				Events: func() (evtchn.Channels, error) { return evtchn.NewSim(d), nil }},
			func() { m.Close(); c.Close(); d.Close() }, nil
	}
	c, err := xs.Open()
	if err != nil {
		return svc.Platform{}, nil, fmt.Errorf("real Xen: %w (set sim = DIR in rules.toml for the simulator)", err)
	}
	m, err := grant.OpenXenMapper()
	if err != nil {
		c.Close()
		return svc.Platform{}, nil, err
	}
	return svc.Platform{XS: c, Mapper: m, BackDom: 0,
			Events: func() (evtchn.Channels, error) { return evtchn.OpenXen() }},
		func() { m.Close(); c.Close() }, nil
}

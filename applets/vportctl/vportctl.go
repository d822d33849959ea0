// Package vportctl is the `pvusb vportctl` applet: add, remove and list
// the port rules of a running usbback.
package vportctl

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/pvusb/pvusb/applets/help"
	"github.com/pvusb/pvusb/core/rules"
	svc "github.com/pvusb/pvusb/core/usbback"
	"github.com/pvusb/pvusb/stub/libusb"
	"github.com/pvusb/pvusb/stub/usbfs"
)

// Command returns the applet.
func Command() *cli.Command {
	socket := &cli.StringFlag{Name: "socket", Aliases: []string{"s"}, Value: rules.DefaultControl, Usage: "usbback's control socket"}
	config := &cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "take the socket from this rules.toml"}
	path := func(c *cli.Context) (string, error) {
		if p := c.String("config"); p != "" {
			cfg, err := rules.Load(p)
			if err != nil {
				return "", err
			}
			return cfg.Control, nil
		}
		return c.String("socket"), nil
	}
	one := func(op string) cli.ActionFunc {
		return func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("%s takes one rule (<busid>:<domid>:<vusb>:<port>)", op)
			}
			p, err := path(c)
			if err != nil {
				return err
			}
			_, err = svc.Call(p, svc.Request{Op: op, Rule: c.Args().First()})
			return err
		}
	}
	return help.WithExamples(&cli.Command{
		Name:  "vportctl",
		Usage: "add, remove and list virtual-port rules on a running usbback",
		Flags: []cli.Flag{socket, config},
		Subcommands: []*cli.Command{
			{Name: "add", Usage: "put a device on a port: BUSID:DOMID:VUSB:PORT", ArgsUsage: "RULE", Action: one("add")},
			{Name: "del", Usage: "empty a port: a rule, or DOMID:VUSB:PORT", ArgsUsage: "RULE|DOMID:VUSB:PORT", Action: one("del")},
			{Name: "list", Usage: "the ports: rule, state, speed, VID:PID, product, URBs in flight and done, bytes, errors",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					p, err := path(c)
					if err != nil {
						return err
					}
					rsp, err := svc.Call(p, svc.Request{Op: "list"})
					if err != nil {
						return err
					}
					return printPorts(c.App.Writer, rsp.Ports, c.Bool("json"))
				}},
			{Name: "devices", Usage: "the host's USB devices a rule can name (busid, VID:PID, strings), through libusb or sysfs",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					&cli.StringFlag{Name: "via", Value: "auto", Usage: "libusb, sysfs, or auto (libusb when it works here)"},
					&cli.BoolFlag{Name: "cross-check", Usage: "list through both and fail on any disagreement"},
				},
				Action: func(c *cli.Context) error {
					if c.Bool("cross-check") {
						return crossCheck(c.App.Writer)
					}
					devs, via, err := hostDevices(c.String("via"))
					if err != nil {
						return err
					}
					return printDevices(c.App.Writer, devs, via, c.Bool("json"))
				}},
			{Name: "stats", Usage: "the traffic counters of the plugged ports", Action: func(c *cli.Context) error {
				p, err := path(c)
				if err != nil {
					return err
				}
				rsp, err := svc.Call(p, svc.Request{Op: "stats"})
				if err != nil {
					return err
				}
				var plugged []svc.PortInfo
				for _, pi := range rsp.Ports {
					if pi.State == "plugged" {
						plugged = append(plugged, pi)
					}
				}
				return printPorts(c.App.Writer, plugged, false)
			}},
		},
	},
		"pvusb vportctl add emu-msc:/var/lib/pvusb/disk.img:1:0:1",
		"pvusb vportctl del 1:0:1",
		"pvusb vportctl list --json | jq '.[] | select(.state == \"plugged\")'",
		"pvusb vportctl -c /etc/pvusb/rules.toml stats",
		"pvusb vportctl devices            # what busids and VID:PIDs rules can name",
	)
}

// hostDevices lists the host's devices through libusb or sysfs.
func hostDevices(via string) ([]usbfs.Info, string, error) {
	switch via {
	case "libusb":
		d, err := libusb.List()
		return d, via, err
	case "sysfs":
		d, err := usbfs.DefaultHost.List()
		return d, via, err
	case "auto":
		if d, err := libusb.List(); err == nil {
			return d, "libusb", nil
		}
		d, err := usbfs.DefaultHost.List()
		return d, "sysfs", err
	}
	return nil, "", fmt.Errorf("--via %q: libusb, sysfs or auto", via)
}

func printDevices(w io.Writer, devs []usbfs.Info, via string, asJSON bool) error {
	if asJSON {
		if devs == nil {
			devs = []usbfs.Info{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(devs)
	}
	fmt.Fprintf(w, "host USB devices (through %s):\n", via)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUSID\tVID:PID\tSPEED\tCLASS\tMANUFACTURER\tPRODUCT\tSERIAL")
	for _, d := range devs {
		fmt.Fprintf(tw, "%s\t%04x:%04x\t%s\t%02x\t%s\t%s\t%s\n", d.Busid, d.Identity.VID, d.Identity.PID, d.Mbps, d.Identity.Class,
			dash(d.Identity.Manufacturer), dash(d.Identity.Product), dash(d.Identity.Serial))
	}
	return tw.Flush()
}

// crossCheck lists through libusb and sysfs and compares what both must
// agree on: busid, bus and device numbers, identity, speed.
func crossCheck(w io.Writer) error {
	a, err := libusb.List()
	if err != nil {
		return err
	}
	b, err := usbfs.DefaultHost.List()
	if err != nil {
		return err
	}
	if d := usbfs.Diff(a, b); d != "" {
		return fmt.Errorf("libusb and sysfs disagree:\n%s", d)
	}
	fmt.Fprintf(w, "libusb and sysfs agree on %d device(s)\n", len(a))
	return nil
}

func printPorts(w io.Writer, ports []svc.PortInfo, asJSON bool) error {
	if asJSON {
		if ports == nil {
			ports = []svc.PortInfo{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(ports)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PORT\tSTATE\tSPEED\tVID:PID\tPRODUCT\tIN FLIGHT\tURBS\tBYTES\tERRORS\tRULE / DEVICE")
	for _, p := range ports {
		what := p.Rule
		if what == "" {
			what = p.Device // written into port/N by someone else (libxl)
		}
		fmt.Fprintf(tw, "%d:%d:%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", p.Dom, p.VUSB, p.Port, p.State, dash(p.Speed), dash(p.VIDPID),
			dash(p.Product), p.InFlight, p.URBs, p.Bytes, p.Errors, dash(what))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

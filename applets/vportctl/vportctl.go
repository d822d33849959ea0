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
	)
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

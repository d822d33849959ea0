package usbback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"

	"github.com/pvusb/pvusb/core/backend"
	"github.com/pvusb/pvusb/core/ctlsock"
	"github.com/pvusb/pvusb/core/rules"
	"github.com/pvusb/pvusb/core/usbif"
)

// Request is one control-socket request: one JSON object per connection.
type Request struct {
	Op   string `json:"op"`             // "add", "del", "list", "stats"
	Rule string `json:"rule,omitempty"` // add: a rule; del: a rule or "domid:vusb:port"
}

// Response answers a Request.
type Response struct {
	Error string     `json:"error,omitempty"`
	Ports []PortInfo `json:"ports,omitempty"`
}

// PortInfo is one vusb port as `vportctl list` shows it.
type PortInfo struct {
	Dom      uint32 `json:"domid"`
	VUSB     uint32 `json:"vusb"`
	Port     uint8  `json:"port"`
	Rule     string `json:"rule,omitempty"`   // the rule that fills it
	Device   string `json:"device,omitempty"` // what port/N names
	State    string `json:"state"`            // plugged, empty, waiting (frontend not connected)
	Speed    string `json:"speed,omitempty"`
	VIDPID   string `json:"vidpid,omitempty"`
	Product  string `json:"product,omitempty"`
	Maker    string `json:"manufacturer,omitempty"`
	Serial   string `json:"serial,omitempty"`
	InFlight int    `json:"in_flight"`
	URBs     uint64 `json:"urbs"`
	Bytes    uint64 `json:"bytes"`
	Errors   uint64 `json:"errors"`
}

// Add puts a rule on its port, live: the port/N node records it and the
// device is plugged if the frontend is connected.
func (s *Service) Add(r rules.Rule) error {
	ct := s.controller(r.Dom, r.VUSB)
	if ct == nil {
		return fmt.Errorf("no controller dom%d/%d", r.Dom, r.VUSB)
	}
	if int(r.Port) > ct.c.Ports {
		return fmt.Errorf("port %d of a %d-port controller", r.Port, ct.c.Ports)
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	node := ct.paths.Backend + "/port/" + strconv.Itoa(int(r.Port))
	if _, taken := ct.rules[r.Port]; taken {
		return fmt.Errorf("port %s is in use by rule %s", r.Key(), ct.rules[r.Port])
	}
	if v, _ := s.p.XS.ReadString(node); v != "" {
		return fmt.Errorf("port %s is in use by %s", r.Key(), v)
	}
	ct.rules[r.Port] = r
	if r.Device != "" {
		if err := s.p.XS.WriteString(node, r.Device); err != nil {
			delete(ct.rules, r.Port)
			return err
		}
	}
	ct.syncPortsLocked()
	return nil
}

// Del empties a port, live: in-flight URBs are answered, then the
// frontend sees the device leave.
func (s *Service) Del(dom, vusb uint32, port uint8) error {
	ct := s.controller(dom, vusb)
	if ct == nil {
		return fmt.Errorf("no controller dom%d/%d", dom, vusb)
	}
	ct.mu.Lock()
	defer ct.mu.Unlock()
	delete(ct.rules, port)
	if err := s.p.XS.WriteString(ct.paths.Backend+"/port/"+strconv.Itoa(int(port)), ""); err != nil {
		return err
	}
	ct.syncPortsLocked()
	return nil
}

// List describes every port of every controller.
func (s *Service) List() []PortInfo {
	var out []PortInfo
	for _, ct := range s.controllers() {
		ct.mu.Lock()
		eng := ct.eng
		ct.mu.Unlock()
		var stats []backend.PortStats // by port; read outside ct.mu: it is a round trip to the engine
		if eng != nil {
			stats = eng.Ports()
		}
		ct.mu.Lock()
		for p := uint8(1); int(p) <= ct.c.Ports; p++ {
			pi := PortInfo{Dom: ct.c.Domid, VUSB: ct.c.Devid, Port: p, Device: ct.ports[p], State: "waiting"}
			if r, ok := ct.rules[p]; ok {
				pi.Rule = r.String()
			}
			if eng != nil {
				pi.State = "empty"
			}
			if int(p) < len(stats) && stats[p].Speed != usbif.SpeedNone {
				st := stats[p]
				pi.State, pi.Speed = "plugged", st.Speed.String()
				pi.VIDPID = fmt.Sprintf("%04x:%04x", st.Identity.VID, st.Identity.PID)
				pi.Product, pi.Maker, pi.Serial = st.Identity.Product, st.Identity.Manufacturer, st.Identity.Serial
				pi.InFlight, pi.URBs, pi.Bytes, pi.Errors = st.InFlight, st.URBs, st.Bytes, st.Errors
			}
			out = append(out, pi)
		}
		ct.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Dom != b.Dom {
			return a.Dom < b.Dom
		}
		if a.VUSB != b.VUSB {
			return a.VUSB < b.VUSB
		}
		return a.Port < b.Port
	})
	return out
}

// Listen opens the control socket at path, mode 0600 (root only).
func Listen(path string) (net.Listener, error) { return ctlsock.Listen(path) }

// Serve answers control requests on l until ctx ends.
func (s *Service) Serve(ctx context.Context, l net.Listener) error {
	return ctlsock.Serve(ctx, l, func(b []byte) any {
		var req Request
		if err := json.Unmarshal(b, &req); err != nil {
			return Response{Error: "request is not a JSON object"}
		}
		return s.Do(req)
	})
}

// Do carries out one request.
func (s *Service) Do(req Request) Response {
	fail := func(err error) Response { return Response{Error: err.Error()} }
	switch req.Op {
	case "add":
		r, err := rules.Parse(req.Rule)
		if err != nil {
			return fail(err)
		}
		if err := s.Add(r); err != nil {
			return fail(err)
		}
		s.log.Info("usbback: rule added", "rule", r.String())
		return Response{}
	case "del":
		dom, vusb, port, err := rules.ParseKey(req.Rule)
		if err != nil {
			r, perr := rules.Parse(req.Rule)
			if perr != nil {
				return fail(fmt.Errorf("%q is neither a rule nor domid:vusb:port", req.Rule))
			}
			dom, vusb, port = r.Dom, r.VUSB, r.Port
		}
		if err := s.Del(dom, vusb, port); err != nil {
			return fail(err)
		}
		s.log.Info("usbback: port emptied", "port", fmt.Sprintf("%d:%d:%d", dom, vusb, port))
		return Response{}
	case "list", "stats":
		return Response{Ports: s.List()}
	}
	return fail(fmt.Errorf("unknown operation %q (add, del, list, stats)", req.Op))
}

// Call sends one request to a control socket.
func Call(path string, req Request) (Response, error) {
	var rsp Response
	if err := ctlsock.Call(path, req, &rsp); err != nil {
		return Response{}, fmt.Errorf("usbback: %w", err)
	}
	if rsp.Error != "" {
		return rsp, errors.New(rsp.Error)
	}
	return rsp, nil
}

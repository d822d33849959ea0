package ringview

import (
	"fmt"
	"io"
	"strings"

	"github.com/pvusb/pvusb/core/usbif"
)

// WriteText prints the dump for a person: the header and what it means,
// the requests, the responses, and the anomalies. note says how the kind
// was chosen.
func (d *Dump) WriteText(w io.Writer, note string) error {
	var b strings.Builder
	l := d.Kind.Layout()
	fmt.Fprintf(&b, "%s ring: %d slots of %d bytes (%s)\n", d.Kind, d.Size, l.EntrySize, note)
	fmt.Fprintf(&b, "header: req_prod %d  req_event %d  rsp_prod %d  rsp_event %d\n", d.ReqProd, d.ReqEvent, d.RspProd, d.RspEvent)
	fmt.Fprintf(&b, "  %d request(s) posted and not yet answered (req_prod - rsp_prod)\n", d.Outstanding)
	fmt.Fprintf(&b, "  back: wants an event when request %d is posted (req_event); it had taken %d when it last slept\n", d.ReqEvent, d.ReqEvent-1)
	unread := d.RspProd - (d.RspEvent - 1)
	if unread > d.Size {
		unread = 0
	}
	fmt.Fprintf(&b, "  front: wants an event when response %d is posted (rsp_event); %d response(s) unread since it last slept\n", d.RspEvent, unread)

	fmt.Fprintf(&b, "requests (%d):\n", len(d.Requests))
	if d.Kind == KindConn {
		writeConnRequests(&b, d.Requests)
	}
	for _, r := range d.Requests {
		if d.Kind == KindConn {
			break
		}
		writeURBRequest(&b, &r)
	}
	fmt.Fprintf(&b, "responses still in the page (%d, oldest first):\n", len(d.Responses))
	for _, r := range d.Responses {
		state := "unread"
		if r.Consumed {
			state = "read"
		}
		fmt.Fprintf(&b, "  [%d] slot %-3d id %-5d ", r.Index, r.Slot, r.ID)
		if d.Kind == KindConn {
			fmt.Fprintf(&b, "port %d speed %s", *r.Portnum, r.SpeedName)
		} else {
			fmt.Fprintf(&b, "%s (%d) actual_length %d", r.StatusName, *r.Status, *r.ActualLength)
			if *r.ErrorCount != 0 || *r.StartFrame != 0 {
				fmt.Fprintf(&b, " start_frame %d error_count %d", *r.StartFrame, *r.ErrorCount)
			}
		}
		fmt.Fprintf(&b, "  %s\n", state)
		for _, a := range r.Anomalies {
			fmt.Fprintf(&b, "      ! %s\n", a)
		}
	}
	n := len(d.Anomalies)
	for _, r := range d.Requests {
		n += len(r.Anomalies)
	}
	for _, r := range d.Responses {
		n += len(r.Anomalies)
	}
	if n == 0 {
		b.WriteString("anomalies: none\n")
	} else {
		fmt.Fprintf(&b, "anomalies: %d (%d of the ring, the rest marked ! with their entry above)\n", n, len(d.Anomalies))
		for _, a := range d.Anomalies {
			fmt.Fprintf(&b, "  ! %s\n", a)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeURBRequest(b *strings.Builder, r *Request) {
	dir := "OUT"
	if *r.In {
		dir = "IN"
	}
	state := "posted"
	if r.Taken {
		state = "taken by the back"
	}
	fmt.Fprintf(b, "  [%d] slot %-2d id %-5d port %d dev %d ep %d %s %s", r.Index, r.Slot, r.ID, *r.Port, *r.Devnum, *r.Endpoint, dir, r.Type)
	if *r.Unlink {
		fmt.Fprintf(b, " UNLINK of id %d  (%s)\n", *r.UnlinkID, state)
	} else {
		if r.SetupText != "" {
			fmt.Fprintf(b, "  %s", r.SetupText)
		}
		if r.Isoc != nil {
			fmt.Fprintf(b, "  packets %d interval %d start_frame %d", r.Isoc.NumberOfPackets, r.Isoc.Interval, r.Isoc.StartFrame)
		}
		flags := ""
		if *r.TransferFlags&usbif.ShortNotOK != 0 {
			flags = " SHORT_NOT_OK"
		}
		fmt.Fprintf(b, "  flags 0x%04x%s length %d", *r.TransferFlags, flags, *r.BufferLength)
		if sum := dataBytes(r); sum != int(*r.BufferLength) {
			fmt.Fprintf(b, " (segments hold %d)", sum)
		}
		fmt.Fprintf(b, " segs %d  (%s)\n", *r.NrBufferSegs, state)
		writeSegments(b, r.Segs, int(*r.NrBufferSegs))
	}
	for _, a := range r.Anomalies {
		fmt.Fprintf(b, "      ! %s\n", a)
	}
}

// writeConnRequests folds the usual 512 credits into runs of consecutive
// ids, then lists the hot-plug events still readable in re-posted slots.
func writeConnRequests(b *strings.Builder, rs []Request) {
	defer func() {
		n := 0
		for _, r := range rs {
			if e := r.EarlierEvent; e != nil {
				if n == 0 {
					b.WriteString("  hot-plug events answered earlier, still in their re-posted slots (bytes 2-3 survive a credit):\n")
				}
				n++
				fmt.Fprintf(b, "    [%d] slot %d port %d speed %s\n", e.Index, r.Slot, e.Portnum, e.SpeedName)
			}
		}
	}()
	for i := 0; i < len(rs); {
		j := i
		for j+1 < len(rs) && rs[j+1].ID == rs[j].ID+1 {
			j++
		}
		if j == i {
			fmt.Fprintf(b, "  [%d] slot %d id %d\n", rs[i].Index, rs[i].Slot, rs[i].ID)
		} else {
			fmt.Fprintf(b, "  [%d..%d] slots %d..%d ids %d..%d (%d credits)\n", rs[i].Index, rs[j].Index, rs[i].Slot, rs[j].Slot, rs[i].ID, rs[j].ID, j-i+1)
		}
		i = j + 1
	}
}

func dataBytes(r *Request) int {
	n := 0
	for i, s := range r.Segs {
		if i < int(*r.NrBufferSegs) {
			n += int(s.Length)
		}
	}
	return n
}

// writeSegments prints one line per segment, folding runs of whole pages
// with consecutive grant references (the shape of a large aligned buffer).
func writeSegments(b *strings.Builder, segs []Segment, nData int) {
	full := func(i int) bool { return segs[i].Offset == 0 && segs[i].Length == usbif.PageSize }
	for i := 0; i < len(segs); {
		kind := "data"
		if i >= nData {
			kind = "iso-desc"
		}
		j := i
		sameKind := func(k int) bool { return (k < nData) == (i < nData) }
		for full(i) && j+1 < len(segs) && sameKind(j+1) && full(j+1) && segs[j+1].Gref == segs[j].Gref+1 {
			j++
		}
		if j > i {
			fmt.Fprintf(b, "      seg %d-%d %s grefs %d..%d  whole pages (%d x 4096)\n", i, j, kind, segs[i].Gref, segs[j].Gref, j-i+1)
		} else {
			s := segs[i]
			fmt.Fprintf(b, "      seg %-2d %-8s gref %-6d offset %-4d length %d\n", i, kind, s.Gref, s.Offset, s.Length)
		}
		i = j + 1
	}
}

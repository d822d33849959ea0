package hid

import (
	"fmt"
	"strconv"
	"strings"
)

// Event is one parsed input line.
type Event struct {
	Op     string   // press, release, tap, type (keyboard); move, wheel, press, release, click (mouse)
	Keys   []uint8  // key usages (keyboard) or button bits (mouse)
	Mods   uint8    // modifier bits named with the keys
	Text   string   // type
	DX, DY int      // move
	Wheel  int      // wheel
	chars  []keyHit // type: the keys to hit for Text
}

type keyHit struct{ key, mods uint8 }

// Modifier bits of a boot keyboard report's first byte.
var modifiers = map[string]uint8{
	"ctrl": 0x01, "lctrl": 0x01, "shift": 0x02, "lshift": 0x02, "alt": 0x04, "lalt": 0x04, "meta": 0x08, "lmeta": 0x08,
	"rctrl": 0x10, "rshift": 0x20, "ralt": 0x40, "rmeta": 0x80,
}

// keys are Keyboard/Keypad page usages (HID Usage Tables §10) by name.
var keys = func() map[string]uint8 {
	m := map[string]uint8{
		"enter": 0x28, "esc": 0x29, "backspace": 0x2a, "tab": 0x2b, "space": 0x2c, "minus": 0x2d, "equal": 0x2e,
		"leftbracket": 0x2f, "rightbracket": 0x30, "backslash": 0x31, "semicolon": 0x33, "apostrophe": 0x34,
		"grave": 0x35, "comma": 0x36, "dot": 0x37, "slash": 0x38, "capslock": 0x39, "insert": 0x49, "home": 0x4a,
		"pageup": 0x4b, "delete": 0x4c, "end": 0x4d, "pagedown": 0x4e, "right": 0x4f, "left": 0x50, "down": 0x51, "up": 0x52,
		"numlock": 0x53,
	}
	for c := 'a'; c <= 'z'; c++ {
		m[string(c)] = uint8(0x04 + c - 'a')
	}
	for c := '1'; c <= '9'; c++ {
		m[string(c)] = uint8(0x1e + c - '1')
	}
	m["0"] = 0x27
	for i := 1; i <= 12; i++ {
		m["f"+strconv.Itoa(i)] = uint8(0x3a + i - 1)
	}
	return m
}()

// chars maps a typed character to its key and whether it needs shift (US layout).
var chars = func() map[rune]keyHit {
	m := map[rune]keyHit{' ': {0x2c, 0}, '\t': {0x2b, 0}, '\n': {0x28, 0}}
	for c := 'a'; c <= 'z'; c++ {
		m[c] = keyHit{uint8(0x04 + c - 'a'), 0}
		m[c-'a'+'A'] = keyHit{uint8(0x04 + c - 'a'), 0x02}
	}
	digits, shifted := "1234567890", "!@#$%^&*()"
	for i := range digits {
		m[rune(digits[i])] = keyHit{uint8(0x1e + i), 0}
		m[rune(shifted[i])] = keyHit{uint8(0x1e + i), 0x02}
	}
	plain, shift := "-=[]\\;'`,./", "_+{}|:\"~<>?"
	codes := []uint8{0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38}
	for i := range codes {
		m[rune(plain[i])] = keyHit{codes[i], 0}
		m[rune(shift[i])] = keyHit{codes[i], 0x02}
	}
	return m
}()

var buttons = map[string]uint8{"left": 0x01, "right": 0x02, "middle": 0x04}

// maxLine bounds what one event line may ask for.
const (
	maxTypeChars = 1024
	maxMove      = 1 << 16
)

// ParseEvent reads one line of input events for kind; a blank line or a
// "#" comment is (nil, nil).
//
//	keyboard: press KEY...  release [KEY...]  tap KEY...  type TEXT
//	          (KEY: a-z 0-9 f1-f12 enter esc space tab backspace … and
//	          the modifiers ctrl shift alt meta, l/r-prefixed; TEXT may
//	          use \n and \t)
//	mouse:    move DX DY  wheel N  press|release|click left|right|middle
func ParseEvent(kind Kind, line string) (*Event, error) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return nil, nil
	}
	op, rest, _ := strings.Cut(line, " ")
	ev := &Event{Op: op}
	args := strings.Fields(rest)
	if kind == Keyboard {
		switch op {
		case "press", "release", "tap":
			if op != "release" && len(args) == 0 {
				return nil, fmt.Errorf("%q: %s needs keys", line, op)
			}
			for _, a := range args {
				a = strings.ToLower(a)
				if m, ok := modifiers[a]; ok {
					ev.Mods |= m
				} else if k, ok := keys[a]; ok {
					ev.Keys = append(ev.Keys, k)
				} else {
					return nil, fmt.Errorf("%q: unknown key %q", line, a)
				}
			}
			return ev, nil
		case "type":
			text := strings.NewReplacer(`\n`, "\n", `\t`, "\t").Replace(rest)
			if len(text) > maxTypeChars {
				return nil, fmt.Errorf("type: %d characters (at most %d)", len(text), maxTypeChars)
			}
			for _, c := range text {
				h, ok := chars[c]
				if !ok {
					return nil, fmt.Errorf("type: no key for %q", c)
				}
				ev.chars = append(ev.chars, h)
			}
			ev.Text = text
			return ev, nil
		}
		return nil, fmt.Errorf("%q: keyboard events are press, release, tap, type", line)
	}
	num := func(s string) (int, error) {
		v, err := strconv.Atoi(s)
		if err != nil || v < -maxMove || v > maxMove {
			return 0, fmt.Errorf("%q: %q is not a number within ±%d", line, s, maxMove)
		}
		return v, nil
	}
	var err error
	switch op {
	case "move":
		if len(args) != 2 {
			return nil, fmt.Errorf("%q: move DX DY", line)
		}
		if ev.DX, err = num(args[0]); err == nil {
			ev.DY, err = num(args[1])
		}
		return ev, err
	case "wheel":
		if len(args) != 1 {
			return nil, fmt.Errorf("%q: wheel N", line)
		}
		ev.Wheel, err = num(args[0])
		return ev, err
	case "press", "release", "click":
		if len(args) != 1 {
			return nil, fmt.Errorf("%q: %s BUTTON", line, op)
		}
		b, ok := buttons[strings.ToLower(args[0])]
		if !ok {
			return nil, fmt.Errorf("%q: buttons are left, right, middle", line)
		}
		ev.Keys = []uint8{b}
		return ev, nil
	}
	return nil, fmt.Errorf("%q: mouse events are move, wheel, press, release, click", line)
}

// inputState is what is held down between events.
type inputState struct {
	keys    []uint8
	mods    uint8
	buttons uint8
}

// apply turns an event into the reports it produces.
func (s *inputState) apply(kind Kind, ev *Event) [][]byte {
	if kind == Mouse {
		return s.mouse(ev)
	}
	var out [][]byte
	switch ev.Op {
	case "press":
		s.press(ev.Keys, ev.Mods)
		out = append(out, s.keyboard())
	case "release":
		if len(ev.Keys) == 0 && ev.Mods == 0 {
			s.keys, s.mods = nil, 0
		} else {
			s.release(ev.Keys, ev.Mods)
		}
		out = append(out, s.keyboard())
	case "tap":
		s.press(ev.Keys, ev.Mods)
		out = append(out, s.keyboard())
		s.release(ev.Keys, ev.Mods)
		out = append(out, s.keyboard())
	case "type":
		for _, h := range ev.chars {
			s.press([]uint8{h.key}, h.mods)
			out = append(out, s.keyboard())
			s.release([]uint8{h.key}, h.mods)
			out = append(out, s.keyboard())
		}
	}
	return out
}

func (s *inputState) press(ks []uint8, mods uint8) {
	s.mods |= mods
	for _, k := range ks {
		if !contains(s.keys, k) {
			s.keys = append(s.keys, k)
		}
	}
}

func (s *inputState) release(ks []uint8, mods uint8) {
	s.mods &^= mods
	var keep []uint8
	for _, k := range s.keys {
		if !contains(ks, k) {
			keep = append(keep, k)
		}
	}
	s.keys = keep
}

// keyboard is the boot report of what is held: more than six keys is
// the phantom state (ErrorRollOver in every slot, HID Usage Tables §10).
func (s *inputState) keyboard() []byte {
	r := make([]byte, 8)
	r[0] = s.mods
	if len(s.keys) > 6 {
		for i := 2; i < 8; i++ {
			r[i] = 0x01
		}
		return r
	}
	copy(r[2:], s.keys)
	return r
}

func (s *inputState) mouse(ev *Event) [][]byte {
	var out [][]byte
	report := func(dx, dy, wheel int) {
		out = append(out, []byte{s.buttons, byte(int8(dx)), byte(int8(dy)), byte(int8(wheel))})
	}
	switch ev.Op {
	case "move", "wheel":
		// One report carries at most ±127 per axis: big moves are split.
		dx, dy, w := ev.DX, ev.DY, ev.Wheel
		for first := true; first || dx != 0 || dy != 0 || w != 0; first = false {
			sx, sy, sw := clamp(dx), clamp(dy), clamp(w)
			report(sx, sy, sw)
			dx, dy, w = dx-sx, dy-sy, w-sw
		}
	case "press":
		s.buttons |= ev.Keys[0]
		report(0, 0, 0)
	case "release":
		s.buttons &^= ev.Keys[0]
		report(0, 0, 0)
	case "click":
		s.buttons |= ev.Keys[0]
		report(0, 0, 0)
		s.buttons &^= ev.Keys[0]
		report(0, 0, 0)
	}
	return out
}

func clamp(v int) int { return max(-127, min(127, v)) }

func contains(s []uint8, v uint8) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

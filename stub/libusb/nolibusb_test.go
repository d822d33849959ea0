//go:build !libusb

package libusb

import (
	"errors"
	"testing"
)

func TestWithoutLibusbListSaysSo(t *testing.T) {
	if _, err := List(); !errors.Is(err, ErrNotBuilt) || Built {
		t.Fatalf("List: %v, Built %v", err, Built)
	}
}

package driver

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running (the
// replica sets' probes are owned by the Connector and stopped by Close).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

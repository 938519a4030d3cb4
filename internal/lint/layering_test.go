// Package lint holds tests that check rules of the code base itself rather
// than behaviour: today, the import layering of the architecture note.
package lint

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/dbproxy/dbproxy"

// allowed lists, for each package of the module, the packages of the module
// it may import (directly or through others). Test-only leaves (integration,
// bench) and the binary (cmd/dbproxy) may import anything and are not listed.
// A package of the module missing from this table fails the test, so a new
// package has to take a place in the layering.
var allowed = map[string][]string{
	// layer 0: socket I/O under the pools and the proxy's listener, and
	// connecting to PostgreSQL (sslmode negotiation).
	"internal/sockio": nil,
	"internal/pgdial": nil,
	// layer 1: import nothing from this module but layer 0.
	"shard":   nil,
	"replica": {"internal/sockio", "internal/pgdial"},
	"cache":   {"internal/pgdial"},
	// test helpers: leaves too.
	"internal/pgcluster": nil,
	"internal/testbed":   {"internal/pgcluster"}, // shares its LSN reading
	"internal/lint":      nil,
	// layer 2.
	"router": {"shard", "replica", "cache", "internal/sockio", "internal/pgdial"},
	"config": {"shard", "replica", "cache", "internal/sockio", "internal/pgdial"},
	// layer 3: lower layers only, never each other.
	"proxy":      {"router", "shard", "replica", "cache", "config", "internal/sockio", "internal/pgdial"},
	"driver":     {"router", "shard", "replica", "cache", "config", "internal/sockio", "internal/pgdial"},
	"failover":   {"shard", "replica", "config", "internal/sockio", "internal/pgdial"},
	"migrations": {"shard", "replica", "config", "internal/sockio", "internal/pgdial"},
}

// free lists packages that may import anything of the module.
var free = map[string]bool{
	"cmd/dbproxy": true,
	"integration": true,
	"bench":       true,
}

type listedPackage struct {
	ImportPath string
	Deps       []string
	Error      *struct{ Err string }
}

// TestImportLayering runs `go list -deps` over the module and checks every
// package's transitive imports of module packages against the allow-list.
func TestImportLayering(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Deps,Error", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	pkgs, err := decodePackages(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list returned no packages")
	}
	var violations []string
	for _, p := range pkgs {
		rel, ok := relative(p.ImportPath)
		if !ok || rel == "" {
			continue
		}
		if free[rel] || strings.HasPrefix(rel, "cmd/") {
			continue
		}
		allow, known := allowedFor(rel)
		if !known {
			violations = append(violations, rel+": not placed in the layering (add it to allowed in internal/lint)")
			continue
		}
		for _, d := range p.Deps {
			drel, ok := relative(d)
			if !ok || drel == rel || strings.HasPrefix(drel, rel+"/") {
				continue
			}
			if !contains(allow, drel) {
				violations = append(violations, rel+" imports "+drel)
			}
		}
	}
	sort.Strings(violations)
	for _, v := range violations {
		t.Error("layering violation: " + v)
	}
}

// TestLayeringCatchesViolations feeds a fabricated listing through the same
// check so the test above is known to be able to fail.
func TestLayeringCatchesViolations(t *testing.T) {
	allow, _ := allowedFor("shard")
	if contains(allow, "router") {
		t.Fatal("shard must not be allowed to import router")
	}
	allow, _ = allowedFor("proxy")
	if contains(allow, "driver") || contains(allow, "failover") {
		t.Fatal("proxy must not be allowed to import driver or failover")
	}
	if _, known := allowedFor("newpkg"); known {
		t.Fatal("an unlisted package must be reported")
	}
	// Sub-packages inherit their parent's place (shard/rebalance is the exception
	// the architecture names, and it is listed explicitly when it exists).
	if _, known := allowedFor("proxy/internalthing"); !known {
		t.Fatal("a sub-package of a listed package must inherit its rules")
	}
}

func allowedFor(rel string) ([]string, bool) {
	if a, ok := allowed[rel]; ok {
		return a, true
	}
	// A sub-package takes the rules of its nearest listed parent.
	for dir := filepath.Dir(rel); dir != "." && dir != "/"; dir = filepath.Dir(dir) {
		if a, ok := allowed[dir]; ok {
			return a, true
		}
	}
	return nil, false
}

func relative(importPath string) (string, bool) {
	if importPath == module {
		return "", true
	}
	if strings.HasPrefix(importPath, module+"/") {
		return strings.TrimPrefix(importPath, module+"/"), true
	}
	return "", false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s || strings.HasPrefix(s, x+"/") {
			return true
		}
	}
	return false
}

func decodePackages(out []byte) ([]listedPackage, error) {
	dec := json.NewDecoder(bytes.NewReader(out))
	var pkgs []listedPackage
	for {
		var p listedPackage
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			return pkgs, nil
		}
		if err != nil {
			return nil, err
		}
		pkgs = append(pkgs, p)
	}
}

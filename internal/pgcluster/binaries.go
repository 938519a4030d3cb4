package pgcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ErrNoBinaries is returned (wrapped, naming every place searched) when no
// PostgreSQL server binaries can be found.
var ErrNoBinaries = errors.New("pgcluster: PostgreSQL server binaries not found")

// binGlob is where Debian installs versioned PostgreSQL binaries.
const binGlob = "/usr/lib/postgresql/*/bin"

// requiredTools are the programs pgcluster runs; all must be in BinDir.
var requiredTools = []string{"postgres", "initdb", "pg_ctl", "pg_basebackup"}

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// BinDir returns the directory holding the PostgreSQL server binaries:
// `pg_config --bindir` when that directory holds `postgres`, else the newest
// /usr/lib/postgresql/<version>/bin that does. The result is cached for the
// life of the process. A missing binary is an error wrapping ErrNoBinaries.
func BinDir() (string, error) {
	binOnce.Do(func() { binDir, binErr = findBinDir("pg_config", binGlob) })
	return binDir, binErr
}

// findBinDir searches pgConfig's --bindir, then the directories matching glob.
func findBinDir(pgConfig, glob string) (string, error) {
	var searched []string
	if pgc, err := exec.LookPath(pgConfig); err == nil {
		out, err := exec.Command(pgc, "--bindir").Output()
		if err == nil {
			dir := strings.TrimSpace(string(out))
			searched = append(searched, fmt.Sprintf("pg_config --bindir (%s)", dir))
			if hasTools(dir) {
				return dir, nil
			}
		} else {
			searched = append(searched, fmt.Sprintf("pg_config --bindir (failed: %v)", err))
		}
	} else {
		searched = append(searched, pgConfig+" (not found)")
	}
	dirs, _ := filepath.Glob(glob)
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	for _, d := range dirs {
		if hasTools(d) {
			return d, nil
		}
	}
	if len(dirs) == 0 {
		searched = append(searched, glob+" (no match)")
	} else {
		searched = append(searched, glob+" ("+strings.Join(dirs, ", ")+")")
	}
	return "", fmt.Errorf("%w: need %s; searched %s",
		ErrNoBinaries, strings.Join(requiredTools, ", "), strings.Join(searched, "; "))
}

// pgVersion extracts the numeric major version from /usr/lib/postgresql/<v>/bin.
func pgVersion(dir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	if err != nil {
		return -1
	}
	return v
}

func hasTools(dir string) bool {
	if dir == "" {
		return false
	}
	for _, t := range requiredTools {
		fi, err := os.Stat(filepath.Join(dir, t))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

package pgcluster

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// initdb is the slowest step of creating a cluster (seconds on a loaded
// 2-core machine), and its output depends only on the binaries and the
// arguments. So the first primary a machine creates is initdb'd into a
// template directory under os.TempDir(), and every later primary is a copy of
// it (cp -a, a fraction of a second). The template directory's name hashes
// the binaries' path and modification time, the server user and the initdb
// recipe, so an upgrade or a recipe change builds a new one. Clusters copied
// from one template share a database system identifier.

// templateRecipe changes whenever initdbArgs or the files written after
// initdb change, invalidating older templates.
const templateRecipe = "v1"

var initdbArgs = []string{"-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"}

const hbaConf = "# Written by pgcluster.\n" +
	"local all postgres trust\n" +
	"local replication all trust\n" +
	"local all all scram-sha-256\n" +
	"host all postgres 127.0.0.1/32 trust\n" +
	"host replication all 127.0.0.1/32 trust\n" +
	"host all all 127.0.0.1/32 scram-sha-256\n"

// hbaTLSOnly is pg_hba.conf for Options.TLS.Only: other users need TLS.
const hbaTLSOnly = "# Written by pgcluster.\n" +
	"host all postgres 127.0.0.1/32 trust\n" +
	"host replication all 127.0.0.1/32 trust\n" +
	"hostssl all all 127.0.0.1/32 scram-sha-256\n"

const confInclude = "\n# Settings managed by pgcluster (rewritten on every start).\ninclude 'pgcluster.conf'\n"

var templateMu sync.Mutex // one template build at a time per process

// templateDir returns the data directory of an initdb template for c's
// binaries and user, building it if needed.
func (c *Cluster) templateDir(ctx context.Context) (string, error) {
	templateMu.Lock()
	defer templateMu.Unlock()
	fi, err := os.Stat(filepath.Join(c.bin, "postgres"))
	if err != nil {
		return "", err
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|%d|%d|%s|%s|%s", c.bin, fi.ModTime().UnixNano(), c.user.uid, templateRecipe, strings.Join(initdbArgs, " "), hbaConf+confInclude)
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("pgcluster-template-%d-%016x", c.user.uid, h.Sum64()))
	data := filepath.Join(dir, "data")
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return data, nil
	}
	build, err := os.MkdirTemp(os.TempDir(), "pgcluster-template-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(build) // no-op once renamed
	if err := c.user.prepareDir(build); err != nil {
		return "", err
	}
	if err := c.initdbInto(ctx, build, filepath.Join(build, "data")); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(build, "complete"), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(build, dir); err != nil {
		// Another process built the same template first: use theirs.
		if _, serr := os.Stat(filepath.Join(dir, "complete")); serr == nil {
			return data, nil
		}
		return "", err
	}
	c.logf("pgcluster: built initdb template %s", dir)
	return data, nil
}

// initdbInto runs initdb for a data directory and writes pgcluster's
// pg_hba.conf and the include of pgcluster.conf.
func (c *Cluster) initdbInto(ctx context.Context, workDir, data string) error {
	args := append([]string{"-D", data}, initdbArgs...)
	if _, err := c.run(ctx, workDir, "initdb", args...); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(confInclude)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return c.writeOwnedFile(filepath.Join(data, "pg_hba.conf"), hbaConf)
}

// copyTemplate copies the template data directory to data as the server
// user (cp -a keeps the 0700 modes PostgreSQL insists on).
func (c *Cluster) copyTemplate(ctx context.Context, workDir, tmpl, data string) error {
	cmd := exec.CommandContext(ctx, "cp", "-a", tmpl, data)
	cmd.Dir = workDir
	cmd.Env = c.env()
	cmd.SysProcAttr = c.user.sysProcAttr()
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("cp -a %s %s: %w: %s", tmpl, data, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeOwnedFile writes a file owned by the server user.
func (c *Cluster) writeOwnedFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	if c.user.switched {
		return os.Chown(path, int(c.user.uid), int(c.user.gid))
	}
	return nil
}

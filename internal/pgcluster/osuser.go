package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ServerUser is the unprivileged OS user pgcluster creates (when running as
// root) to own data directories and run every PostgreSQL program.
const ServerUser = "dbproxy"

// fallbackUsers are tried, in order, when ServerUser cannot be created.
var fallbackUsers = []string{"nobody"}

// osUser is the identity servers and tools run as.
type osUser struct {
	name     string
	uid, gid uint32
	switched bool // true when we are root and must switch to uid/gid
	home     string
}

// credential returns the SysProcAttr for a command run as u (nil when no
// switch is needed).
func (u osUser) sysProcAttr() *syscall.SysProcAttr {
	if !u.switched {
		return nil
	}
	return &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: u.uid, Gid: u.gid, NoSetGroups: true},
	}
}

var (
	userMu     sync.Mutex
	userCached *osUser
)

// runtimeUser returns the OS user servers run as: the current user when not
// root; when root, ServerUser (created with useradd if missing), else an
// existing unprivileged fallback user such as nobody.
func runtimeUser(ctx context.Context, logf func(string, ...any)) (osUser, error) {
	userMu.Lock()
	defer userMu.Unlock()
	if userCached != nil {
		return *userCached, nil
	}
	u, err := resolveUser(ctx, logf)
	if err != nil {
		return osUser{}, err
	}
	userCached = &u
	return u, nil
}

func resolveUser(ctx context.Context, logf func(string, ...any)) (osUser, error) {
	if os.Geteuid() != 0 {
		cur, err := user.Current()
		name := strconv.Itoa(os.Geteuid())
		home := os.Getenv("HOME")
		if err == nil {
			name, home = cur.Username, cur.HomeDir
		}
		return osUser{name: name, uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), home: home}, nil
	}
	if u, err := lookupUnprivileged(ServerUser); err == nil {
		return u, nil
	}
	cmd := exec.CommandContext(ctx, "useradd", "--system", "--user-group", "--no-create-home",
		"--shell", "/usr/sbin/nologin", ServerUser)
	out, addErr := cmd.CombinedOutput()
	// Another process may have created the user concurrently: look again.
	if u, err := lookupUnprivileged(ServerUser); err == nil {
		if addErr == nil {
			logf("pgcluster: created OS user %s (uid %d) to run PostgreSQL", ServerUser, u.uid)
		}
		return u, nil
	}
	for _, name := range fallbackUsers {
		if u, err := lookupUnprivileged(name); err == nil {
			logf("pgcluster: useradd %s failed (%v: %s); running PostgreSQL as %s",
				ServerUser, addErr, strings.TrimSpace(string(out)), name)
			return u, nil
		}
	}
	return osUser{}, fmt.Errorf("pgcluster: running as root and no unprivileged user to run PostgreSQL as: useradd %s: %v: %s; fallbacks %v not found",
		ServerUser, addErr, strings.TrimSpace(string(out)), fallbackUsers)
}

func lookupUnprivileged(name string) (osUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return osUser{}, err
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return osUser{}, fmt.Errorf("pgcluster: user %s has non-numeric uid/gid %q/%q", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return osUser{}, fmt.Errorf("pgcluster: user %s is root", name)
	}
	return osUser{name: name, uid: uint32(uid), gid: uint32(gid), switched: true, home: u.HomeDir}, nil
}

// prepareDir creates dir (mode 0755) if needed and hands it to u.
func (u osUser) prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !u.switched {
		return nil
	}
	if err := os.Chown(dir, int(u.uid), int(u.gid)); err != nil {
		return err
	}
	return nil
}

// ensureTraversable makes every ancestor of dir searchable by u, adding the
// "other" execute bit (search, not read) where it is missing. Only needed when
// switching users.
func (u osUser) ensureTraversable(dir string, logf func(string, ...any)) error {
	if !u.switched {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		ok := fi.Mode().Perm()&0o001 != 0 ||
			(st != nil && st.Uid == u.uid && fi.Mode().Perm()&0o100 != 0) ||
			(st != nil && st.Gid == u.gid && fi.Mode().Perm()&0o010 != 0)
		if !ok {
			if err := os.Chmod(p, fi.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("pgcluster: make %s traversable for user %s: %w", p, u.name, err)
			}
			logf("pgcluster: added o+x to %s so user %s can reach %s", p, u.name, abs)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// errIsNotExist reports whether err means "no such file".
func errIsNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }

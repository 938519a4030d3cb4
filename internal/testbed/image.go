package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"golang.org/x/sys/unix"
)

// The node image is built locally from Debian packages, because the test
// machines reach Debian mirrors but no container registry: mmdebstrap writes
// a minimal bookworm root file system as a tar and the engine imports it.
// One image serves PostgreSQL and etcd nodes. It is tagged by a hash of every
// input, so later runs (and other test packages) reuse it; a file lock keeps
// concurrent test processes from building it twice.

// imageRecipe is bumped when the build steps change in a way the other
// inputs do not capture.
const imageRecipe = 1

const (
	imageRepo = "dbproxy-testbed"
	// DefaultMirror is the Debian mirror the image is built from; the
	// environment variable DBPROXY_TESTBED_MIRROR overrides it.
	DefaultMirror = "http://deb.debian.org/debian"
	imageSuite    = "bookworm"
)

// imagePackages are installed on top of the minbase variant.
var imagePackages = []string{
	"postgresql-15",   // server, initdb, pg_basebackup, pg_ctl
	"etcd-server",     // etcd 3.4
	"iproute2",        // ip, tc: inspecting the link
	"iptables",        // loss (statistic match) and latency (NFQUEUE)
	"procps",          // ps, pkill inside nodes
	"ca-certificates", //
}

// imageDpkgOpts keep documentation out of the image and skip dpkg's
// fsyncs (the tar is written once the build is over).
var imageDpkgOpts = []string{
	"force-unsafe-io",
	"path-exclude=/usr/share/man/*",
	"path-exclude=/usr/share/doc/*",
	"path-exclude=/usr/share/locale/*",
}

// imageCustomize runs in the finished root: drop the cluster the Debian
// package creates (nodes make their own).
const imageCustomize = `rm -rf "$1"/var/lib/postgresql/15 "$1"/etc/postgresql/15/main`

// imageChanges are Dockerfile instructions applied by the import.
var imageChanges = []string{
	"ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"ENV LANG=C.UTF-8",
	`CMD ["sleep","infinity"]`,
}

var (
	imageMu  sync.Mutex
	imageRef string
)

// Image returns the reference of the node image, building it first if the
// engine does not have it. The first build takes about half a minute plus
// the package downloads; afterwards it is a lookup. Errors wrap
// ErrMissingTool when mmdebstrap is not installed and ErrNoEngine when the
// engine cannot be reached. Safe for concurrent use, within a process and
// across processes.
func Image(ctx context.Context, logf func(string, ...any)) (string, error) {
	imageMu.Lock()
	defer imageMu.Unlock()
	if imageRef != "" {
		return imageRef, nil
	}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	mirror := os.Getenv("DBPROXY_TESTBED_MIRROR")
	if mirror == "" {
		mirror = DefaultMirror
	}
	builder, version, err := findBuilder(ctx)
	if err != nil {
		return "", err
	}
	ref := imageRepo + ":" + imageTag(version, mirror)

	cli, err := docker(ctx)
	if err != nil {
		return "", err
	}
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		imageRef = ref
		return ref, nil
	} else if !isNotFound(err) {
		return "", fmt.Errorf("testbed: inspect image %s: %w", ref, err)
	}

	unlock, err := lockFile(ctx, filepath.Join(os.TempDir(), "dbproxy-testbed-image.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have built it while we waited for the lock.
	if _, err := cli.ImageInspect(ctx, ref); err == nil {
		imageRef = ref
		return ref, nil
	}

	start := time.Now()
	dir, err := os.MkdirTemp("", "dbproxy-testbed-build-")
	if err != nil {
		return "", fmt.Errorf("testbed: image build dir: %w", err)
	}
	defer os.RemoveAll(dir)
	tarPath := filepath.Join(dir, "rootfs.tar")
	args := []string{"--variant=minbase", "--include=" + strings.Join(imagePackages, ",")}
	for _, o := range imageDpkgOpts {
		args = append(args, "--dpkgopt="+o)
	}
	args = append(args, "--customize-hook="+imageCustomize, imageSuite, tarPath, mirror)
	logf("testbed: building image %s: mmdebstrap %s", ref, strings.Join(args, " "))
	var outBuf bytes.Buffer
	cmd := exec.CommandContext(ctx, builder, args...)
	cmd.Stdout = &outBuf
	cmd.Stderr = &outBuf
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("testbed: mmdebstrap (mirror %s): %w\n%s", mirror, err, tail(outBuf.String(), 3000))
	}
	built := time.Since(start)

	f, err := os.Open(tarPath)
	if err != nil {
		return "", fmt.Errorf("testbed: open root file system: %w", err)
	}
	defer f.Close()
	res, err := cli.ImageImport(ctx, client.ImageImportSource{Source: f, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: imageChanges, Message: "dbproxy testbed node (mmdebstrap " + imageSuite + ")"})
	if err != nil {
		return "", fmt.Errorf("testbed: import image %s: %w", ref, err)
	}
	body, rerr := io.ReadAll(res)
	_ = res.Close()
	if rerr != nil {
		return "", fmt.Errorf("testbed: import image %s: %w", ref, rerr)
	}
	if msg := importError(body); msg != "" {
		return "", fmt.Errorf("testbed: import image %s: %s", ref, msg)
	}
	if _, err := cli.ImageInspect(ctx, ref); err != nil {
		return "", fmt.Errorf("testbed: image %s missing after import: %w", ref, err)
	}
	logf("testbed: built image %s in %s (mmdebstrap %s, import %s)", ref,
		time.Since(start).Round(time.Millisecond), built.Round(time.Millisecond), (time.Since(start) - built).Round(time.Millisecond))
	pruneImages(ctx, cli, ref, logf)
	imageRef = ref
	return ref, nil
}

// pruneImages removes node images built from other inputs (an older
// recipe). Images a container still uses are kept (no force).
func pruneImages(ctx context.Context, cli *testcontainers.DockerClient, keep string, logf func(string, ...any)) {
	res, err := cli.ImageList(ctx, client.ImageListOptions{Filters: client.Filters{}.Add("reference", imageRepo)})
	if err != nil {
		return
	}
	for _, img := range res.Items {
		for _, tag := range img.RepoTags {
			if tag == keep || !strings.HasPrefix(tag, imageRepo+":") {
				continue
			}
			if _, err := cli.ImageRemove(ctx, tag, client.ImageRemoveOptions{PruneChildren: true}); err == nil {
				logf("testbed: removed outdated image %s", tag)
			}
		}
	}
}

// findBuilder locates mmdebstrap and reads its version.
func findBuilder(ctx context.Context) (path, version string, err error) {
	path, err = exec.LookPath("mmdebstrap")
	if err != nil {
		return "", "", fmt.Errorf("%w: mmdebstrap not found in PATH; install the Debian package: apt-get install -y mmdebstrap", ErrMissingTool)
	}
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", "", fmt.Errorf("testbed: mmdebstrap --version: %w", err)
	}
	return path, strings.TrimSpace(string(out)), nil
}

// imageTag hashes every input of the image build.
func imageTag(builderVersion, mirror string) string {
	h := sha256.New()
	pk := slices.Clone(imagePackages)
	slices.Sort(pk)
	fmt.Fprintf(h, "recipe=%d\nbuilder=%s\nmirror=%s\nsuite=%s\npackages=%s\ndpkg=%s\ncustomize=%s\nchanges=%s\n",
		imageRecipe, builderVersion, mirror, imageSuite, strings.Join(pk, ","),
		strings.Join(imageDpkgOpts, ","), imageCustomize, strings.Join(imageChanges, "\n"))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// importError returns the error the engine reported in the import's JSON
// message stream, or "".
func importError(body []byte) string {
	dec := json.NewDecoder(bytes.NewReader(body))
	for {
		var m struct {
			Error       string `json:"error"`
			ErrorDetail struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			return ""
		}
		if m.Error != "" {
			return m.Error
		}
		if m.ErrorDetail.Message != "" {
			return m.ErrorDetail.Message
		}
	}
}

// lockFile takes an exclusive flock on path, polling so ctx can end the wait.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("testbed: open lock %s: %w", path, err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("testbed: lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("testbed: waiting for lock %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

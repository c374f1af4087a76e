// Package devinfo implements the plugin side of omni's external mode (Mode B):
// when OMNIVIEW_DEV=1 it captures go-plugin's handshake line from stdout and
// writes $OMNIVIEW_HOME/plugins/<id>/.devinfo (Omniview SDK format) so a host
// can attach to an already running plugin; the file is removed on exit.
//
// Usage (before plugin.Serve):
//
//	dev, err := devinfo.Start(devinfo.Config{PluginID: "hello", Version: "0.1.0"})
//	defer dev.Close() // also call it from your SIGINT/SIGTERM handler
//
// All methods are safe on a nil or disabled *Session.
package devinfo

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Environment variables.
const (
	EnvDev      = "OMNIVIEW_DEV"       // "1" enables .devinfo
	EnvHome     = "OMNIVIEW_HOME"      // default ~/.omniview
	EnvPluginID = "OMNIVIEW_PLUGIN_ID" // overrides Config.PluginID
	EnvVitePort = "OMNIVIEW_VITE_PORT" // written as vitePort (0 when unset)
	FileName    = ".devinfo"
)

// Info is the JSON written to .devinfo.
type Info struct {
	PID             int    `json:"pid"`
	Protocol        string `json:"protocol"`
	ProtocolVersion int    `json:"protocolVersion"`
	Addr            string `json:"addr"`
	VitePort        int    `json:"vitePort"`
	PluginID        string `json:"pluginId"`
	Version         string `json:"version"`
	StartedAt       string `json:"startedAt"`
}

// Handshake is a parsed go-plugin handshake line:
// CORE|APP|NETWORK|ADDR|PROTOCOL, optionally followed by |SERVER_CERT
// (go-plugin >= 1.0 always prints the 6th field, possibly empty).
type Handshake struct {
	CoreVersion int
	AppVersion  int
	Network     string // "unix" or "tcp"
	Addr        string // socket path or host:port
	Protocol    string // "grpc" or "netrpc"
	ServerCert  string
}

// ParseHandshake parses one handshake line (trailing newline allowed).
func ParseHandshake(line string) (Handshake, error) {
	var h Handshake
	line = strings.TrimRight(line, "\r\n")
	parts := strings.Split(line, "|")
	if len(parts) != 5 && len(parts) != 6 {
		return h, fmt.Errorf("handshake: want 5 or 6 fields, got %d in %q", len(parts), line)
	}
	var err error
	if h.CoreVersion, err = strconv.Atoi(parts[0]); err != nil {
		return h, fmt.Errorf("handshake: bad core version %q", parts[0])
	}
	if h.AppVersion, err = strconv.Atoi(parts[1]); err != nil {
		return h, fmt.Errorf("handshake: bad app version %q", parts[1])
	}
	h.Network, h.Addr, h.Protocol = parts[2], parts[3], parts[4]
	if h.Network != "unix" && h.Network != "tcp" {
		return h, fmt.Errorf("handshake: unsupported network %q", h.Network)
	}
	if h.Addr == "" {
		return h, fmt.Errorf("handshake: empty address")
	}
	if h.Protocol == "" {
		h.Protocol = "netrpc" // go-plugin's default for old plugins
	}
	if len(parts) == 6 {
		h.ServerCert = parts[5]
	}
	return h, nil
}

// Config configures Start.
type Config struct {
	PluginID string // default plugin id; EnvPluginID overrides it
	Version  string
	// Logf receives progress/error messages (optional). Do not log to
	// os.Stderr after plugin.Serve has started: go-plugin swaps it for a pipe.
	Logf func(format string, args ...interface{})
}

// Session is an active (or disabled) .devinfo writer.
type Session struct {
	enabled bool
	cfg     Config
	path    string
	pid     int
	started time.Time

	pipeW   *os.File
	realOut *os.File
	fwdDone chan struct{}

	mu      sync.Mutex
	closed  bool
	written bool
}

// Enabled reports whether OMNIVIEW_DEV=1 was set when Start ran.
func (s *Session) Enabled() bool { return s != nil && s.enabled }

// Path is the .devinfo path ("" when disabled).
func (s *Session) Path() string {
	if s == nil {
		return ""
	}
	return s.path
}

// Start must be called before plugin.Serve. When OMNIVIEW_DEV != "1" it does
// nothing. Otherwise it replaces os.Stdout with a pipe, forwards everything
// written to it to the real stdout, and writes .devinfo as soon as the first
// line (the handshake) has been forwarded.
func Start(cfg Config) (*Session, error) {
	s := &Session{cfg: cfg, pid: os.Getpid(), started: time.Now()}
	if os.Getenv(EnvDev) != "1" {
		return s, nil
	}
	if id := os.Getenv(EnvPluginID); id != "" {
		s.cfg.PluginID = id
	}
	if s.cfg.PluginID == "" || strings.ContainsAny(s.cfg.PluginID, `/\`) || s.cfg.PluginID == "." || s.cfg.PluginID == ".." {
		return s, fmt.Errorf("devinfo: invalid plugin id %q", s.cfg.PluginID)
	}
	home, err := Home()
	if err != nil {
		return s, err
	}
	s.path = filepath.Join(home, "plugins", s.cfg.PluginID, FileName)

	r, w, err := os.Pipe()
	if err != nil {
		return s, fmt.Errorf("devinfo: pipe: %v", err)
	}
	s.enabled = true
	s.pipeW = w
	s.realOut = os.Stdout
	s.fwdDone = make(chan struct{})
	os.Stdout = w
	go s.forward(r)
	return s, nil
}

// Home returns $OMNIVIEW_HOME or ~/.omniview.
func Home() (string, error) {
	if h := os.Getenv(EnvHome); h != "" {
		return h, nil
	}
	u, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("devinfo: no home directory: %v", err)
	}
	return filepath.Join(u, ".omniview"), nil
}

func (s *Session) logf(format string, args ...interface{}) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

func (s *Session) forward(r *os.File) {
	defer close(s.fwdDone)
	defer r.Close()
	br := bufio.NewReader(r)
	line, err := br.ReadString('\n')
	if line != "" {
		// Forward first: a host waiting on our stdout must see it unchanged.
		io.WriteString(s.realOut, line)
	}
	if err == nil {
		if h, perr := ParseHandshake(line); perr != nil {
			s.logf("not writing %s: %v", FileName, perr)
		} else if werr := s.write(h); werr != nil {
			s.logf("write %s: %v", FileName, werr)
		}
	}
	io.Copy(s.realOut, br)
}

func (s *Session) write(h Handshake) error {
	vitePort := 0
	if v := os.Getenv(EnvVitePort); v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 0 || p > 65535 {
			s.logf("ignoring %s=%q", EnvVitePort, v)
		} else {
			vitePort = p
		}
	}
	info := Info{
		PID:             s.pid,
		Protocol:        h.Protocol,
		ProtocolVersion: h.AppVersion,
		Addr:            h.Addr,
		VitePort:        vitePort,
		PluginID:        s.cfg.PluginID,
		Version:         s.cfg.Version,
		StartedAt:       time.Now().UTC().Format(time.RFC3339),
	}
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil // shutting down already; don't leave a stale file behind
	}
	if err := writeAtomic(s.path, data); err != nil {
		return err
	}
	s.written = true
	s.logf("wrote %s (addr %s %s)", s.path, h.Network, h.Addr)
	return nil
}

// writeAtomic writes data to path via a 0600 temp file in the same directory
// and a rename, so readers never see a partial file.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := ioutil.TempFile(dir, FileName+".tmp-")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmpName, path); err != nil {
		return err
	}
	ok = true
	return nil
}

// Close removes .devinfo if it still names our pid (another instance may have
// replaced it) and flushes the stdout forwarder. Safe to call more than once.
func (s *Session) Close() {
	if s == nil || !s.enabled {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	if s.written {
		if data, err := ioutil.ReadFile(s.path); err == nil {
			var cur Info
			if json.Unmarshal(data, &cur) == nil && cur.PID == s.pid {
				if err := os.Remove(s.path); err == nil {
					s.logf("removed %s", s.path)
				}
			}
		}
	}
	s.mu.Unlock()

	// Let the forwarder drain whatever was written to our pipe. go-plugin has
	// usually replaced os.Stdout by now, so closing our end lets it reach EOF.
	if os.Stdout == s.pipeW {
		os.Stdout = s.realOut
	}
	s.pipeW.Close()
	select {
	case <-s.fwdDone:
	case <-time.After(time.Second):
	}
}

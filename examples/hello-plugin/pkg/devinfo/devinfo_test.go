package devinfo

import (
	"encoding/json"
	"io/ioutil"
	"os"
	"path/filepath"
	"testing"
)

func TestParseHandshake(t *testing.T) {
	cases := []struct {
		line    string
		ok      bool
		network string
		addr    string
	}{
		{"1|1|unix|/tmp/plugin123|grpc|\n", true, "unix", "/tmp/plugin123"}, // go-plugin 1.0.1 (6 fields, empty cert)
		{"1|1|tcp|127.0.0.1:10000|grpc\n", true, "tcp", "127.0.0.1:10000"},  // 5 fields
		{"1|1|tcp|127.0.0.1:10000|grpc|QUJD", true, "tcp", "127.0.0.1:10000"},
		{"1|1|unix|/tmp/x", false, "", ""},
		{"x|1|unix|/tmp/x|grpc", false, "", ""},
		{"1|1|udp|/tmp/x|grpc", false, "", ""},
		{"1|1|unix||grpc", false, "", ""},
	}
	for _, c := range cases {
		h, err := ParseHandshake(c.line)
		if (err == nil) != c.ok {
			t.Fatalf("%q: err=%v, want ok=%v", c.line, err, c.ok)
		}
		if c.ok && (h.Network != c.network || h.Addr != c.addr || h.Protocol != "grpc" || h.AppVersion != 1) {
			t.Fatalf("%q: got %+v", c.line, h)
		}
	}
}

func TestWriteAndClose(t *testing.T) {
	home, err := ioutil.TempDir("", "devinfo-test")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(home)
	s := &Session{enabled: true, cfg: Config{PluginID: "hello", Version: "0.1.0"}, pid: os.Getpid(),
		path: filepath.Join(home, "plugins", "hello", FileName)}
	r, w, _ := os.Pipe()
	s.pipeW, s.realOut, s.fwdDone = w, os.Stdout, make(chan struct{})
	go func() { defer close(s.fwdDone); ioutil.ReadAll(r) }()
	os.Setenv(EnvVitePort, "15173")
	defer os.Unsetenv(EnvVitePort)
	if err := s.write(Handshake{AppVersion: 1, Network: "unix", Addr: "/tmp/p", Protocol: "grpc"}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(s.path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v %v", st, err)
	}
	var info Info
	data, _ := ioutil.ReadFile(s.path)
	if err := json.Unmarshal(data, &info); err != nil || info.PID != os.Getpid() || info.VitePort != 15173 ||
		info.Addr != "/tmp/p" || info.PluginID != "hello" || info.Protocol != "grpc" || info.ProtocolVersion != 1 {
		t.Fatalf("bad info %s (%v)", data, err)
	}
	s.Close()
	if _, err := os.Stat(s.path); !os.IsNotExist(err) {
		t.Fatalf(".devinfo not removed: %v", err)
	}
	entries, _ := ioutil.ReadDir(filepath.Dir(s.path))
	if len(entries) != 0 {
		t.Fatalf("leftover files: %v", entries)
	}
}

func TestCloseKeepsForeignFile(t *testing.T) {
	home, _ := ioutil.TempDir("", "devinfo-test")
	defer os.RemoveAll(home)
	path := filepath.Join(home, FileName)
	ioutil.WriteFile(path, []byte(`{"pid": 1}`), 0o600)
	r, w, _ := os.Pipe()
	s := &Session{enabled: true, pid: os.Getpid(), path: path, written: true, pipeW: w, realOut: os.Stdout, fwdDone: make(chan struct{})}
	go func() { defer close(s.fwdDone); ioutil.ReadAll(r) }()
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("foreign .devinfo removed: %v", err)
	}
}

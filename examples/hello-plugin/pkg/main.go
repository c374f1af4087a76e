// Command plugin is omni's bundled example: a HashiCorp go-plugin (v1.0.1 API)
// gRPC plugin serving hello.Greeter/Greet.
//
// Build (GOPATH mode, no modules, no network), from examples/hello-plugin:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o build/bin/plugin ./pkg
//
// Run as a host would:
//
//	OMNIVIEW=hello PLUGIN_PROTOCOL_VERSIONS=1 ./build/bin/plugin
//
// With OMNIVIEW_DEV=1 it also writes $OMNIVIEW_HOME/plugins/<id>/.devinfo so an
// omni worker can attach to it (Mode B); see ./devinfo.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"./devinfo" // relative import: allowed in GOPATH mode because this package is outside GOPATH
)

const (
	// PluginID is the default plugin id (.devinfo directory name and magic cookie value).
	PluginID = "hello"
	// Version is reported in .devinfo.
	Version = "0.1.0"
)

// Handshake must match the host: key OMNIVIEW, value = plugin id.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "OMNIVIEW",
	MagicCookieValue: "hello",
}

// greeter implements GreeterServer (hello.pb.go).
type greeter struct {
	log hclog.Logger
}

func (g *greeter) Greet(ctx context.Context, req *GreetRequest) (*GreetReply, error) {
	name := req.GetName()
	if name == "" {
		name = "world"
	}
	msg := Greeting + ", " + name
	g.log.Debug("Greet", "name", req.GetName(), "message", msg)
	return &GreetReply{Message: msg}, nil
}

// greeterPlugin adapts greeter to go-plugin's GRPCPlugin interface.
type greeterPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	impl *greeter
}

func (p *greeterPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	RegisterGreeterServer(s, p.impl)
	return nil
}

func (p *greeterPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return NewGreeterClient(c), nil
}

func main() {
	// go-plugin replaces os.Stdout/os.Stderr with pipes it never reads (in gRPC
	// mode, v1.0.1) once the handshake is printed, so keep the real stderr for logs.
	logger := hclog.New(&hclog.LoggerOptions{
		Name:       "hello-plugin",
		Level:      hclog.Debug,
		Output:     os.Stderr,
		JSONFormat: true,
	})
	logger.Info("hello plugin starting", "pid", os.Getpid(), "version", Version, "greeting", Greeting)

	// Only when OMNIVIEW_DEV=1: tee the handshake line and write .devinfo.
	dev, err := devinfo.Start(devinfo.Config{
		PluginID: PluginID,
		Version:  Version,
		Logf: func(format string, args ...interface{}) {
			logger.Info("devinfo: " + fmt.Sprintf(format, args...))
		},
	})
	if err != nil {
		logger.Error("devinfo disabled", "error", err)
	}

	// Keep a handle on the gRPC server so SIGTERM can stop it; Serve then returns,
	// go-plugin closes its listener (which unlinks the unix socket) and we clean up.
	var (
		mu  sync.Mutex
		srv *grpc.Server
	)
	newServer := func(opts []grpc.ServerOption) *grpc.Server {
		s := plugin.DefaultGRPCServer(opts)
		mu.Lock()
		srv = s
		mu.Unlock()
		return s
	}

	sigs := []os.Signal{syscall.SIGTERM}
	if dev.Enabled() {
		// go-plugin ignores SIGINT (the host owns Ctrl-C); a developer running the
		// plugin by hand in Mode B expects Ctrl-C to stop it.
		sigs = append(sigs, os.Interrupt)
	}
	sigCh := make(chan os.Signal, 1)
	signal.Notify(sigCh, sigs...)
	go func() {
		sig := <-sigCh
		logger.Info("received signal, stopping", "signal", sig.String())
		dev.Close()
		mu.Lock()
		s := srv
		mu.Unlock()
		if s == nil {
			os.Exit(0)
		}
		done := make(chan struct{})
		go func() { s.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
			// A go-plugin client keeps a broker stream open; don't wait for it forever.
			s.Stop()
		}
	}()

	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins: plugin.PluginSet{
			"greeter": &greeterPlugin{impl: &greeter{log: logger}},
		},
		GRPCServer: newServer,
		Logger:     logger,
	})

	dev.Close()
	logger.Info("hello plugin exiting")
}

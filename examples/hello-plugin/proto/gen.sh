#!/bin/sh
# Regenerate pkg/hello.pb.go from proto/hello.proto.
#
# The generated file is committed, so building the plugin does NOT need protoc.
# Run this only after editing hello.proto.
#
# Requirements (Debian 12): apt-get install protobuf-compiler golang-goprotobuf-dev
#   protoc            3.21.x  (protobuf-compiler)
#   protoc-gen-go     1.3.5   (golang-goprotobuf-dev -> protoc-gen-go-1-3; old APIv1 generator
#                              that still supports the built-in "plugins=grpc" option)
#
# go_package = "main" in hello.proto makes the output package main, and
# paths=source_relative writes hello.pb.go straight into ../pkg.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
protoc -I . --go_out=plugins=grpc,paths=source_relative:../pkg hello.proto
echo "wrote $(cd ../pkg && pwd)/hello.pb.go"

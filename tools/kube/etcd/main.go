// Command etcd is etcd's own server (go.etcd.io/etcd/server/v3/etcdmain) at the release
// k8s.io/kubernetes pins, built beside kube-apiserver so both come from one go.mod.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

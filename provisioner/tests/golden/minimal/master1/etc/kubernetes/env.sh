# Written by the k8s lab; `lab up` overwrites local changes.
# The handbook's env.sh for master1: the addresses and ranges every chapter uses.
# Load it into a shell with `. /etc/kubernetes/env.sh`; the lab's units do not read it.
export NODE_NAME=master1
export NODE_IP=10.242.0.11
# keepalived's virtual IP and the API endpoint HAProxy serves on it.
export MASTER_VIP=10.242.0.100
export KUBE_APISERVER=https://10.242.0.100:8443
# The Service range, its first address (the `kubernetes` Service) and the DNS Service.
export SERVICE_CIDR=10.34.0.0/24
export CLUSTER_KUBERNETES_SVC_IP=10.34.0.1
export CLUSTER_DNS_SVC_IP=10.34.0.10
export CLUSTER_DNS_DOMAIN=cluster.local
# The pod range; each worker routes a /24 of it.
export CLUSTER_CIDR=10.202.0.0/16
export NODE_PORT_RANGE=30000-32767
export ETCD_ENDPOINTS=https://10.242.0.11:2379
export PATH=/usr/local/bin:$PATH
# kubectl on a master uses the admin credentials.
export KUBECONFIG=/etc/kubernetes/admin.kubeconfig

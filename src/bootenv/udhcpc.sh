#!/bin/sh
# busybox udhcpc's event script in the imaging environment (copied as /etc/udhcpc.script): puts
# the lease's address, default route and DNS servers on the interface. Multicast (the sessions'
# data) follows the route to 224.0.0.0/4, which goes on the same interface when there is no
# default route.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      for r in $router; do
        ip route replace default via "$r" dev "$interface"
        break
      done
    fi
    ip route replace 224.0.0.0/4 dev "$interface"
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
exit 0

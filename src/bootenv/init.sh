#!/bin/sh
# PID 1 of the imaging environment (copied into the initramfs as /init by src/bootenv/build.ts).
# Brings the machine up far enough for img (filesystems, modules, network), then runs
# `img auto` against the server named on the kernel command line, or a maintenance shell.
#
# Kernel arguments (docs: README "Network boot and boot media"; contract: the server writes them):
#   imgcast.server=http://HOST:PORT       the imaging server; absent: img finds it by discovery
#   imgcast.mode=auto|shell               auto (default): img auto; shell: a maintenance shell
#   imgcast.onfail=shell|reboot|poweroff  when img fails (default shell: the reason stays on screen)
#   imgcast.done=reboot|poweroff          after img auto succeeded (default reboot)
#   imgcast.boot=network                  booted by the imaging server's iPXE script: after imaging,
#                                         reboot to the network again (the server sends it to its
#                                         disk), with no change to the firmware's boot list
#
# PID 1 must never exit (the kernel panics): every path ends in a shell loop, reboot -f or
# poweroff -f. reboot/poweroff without -f would signal init, which this script does not handle.

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
export TERM=linux

if [ -z "$IMGCAST_TEED" ]; then
  mount -t proc proc /proc
  mount -t sysfs sysfs /sys
  mount -t devtmpfs devtmpfs /dev
  mkdir -p /dev/pts /dev/shm
  mount -t devpts devpts /dev/pts
  mount -t tmpfs -o mode=0755 run /run
  mount -t tmpfs -o mode=1777 tmp /tmp
  # /dev/console is only the last console= of the command line, and the server names two (the
  # screen and the first serial port, console=ttyS0 console=tty0): what init and img say goes
  # to every active console, through tee, with this script run again under it.
  set --
  for c in $(cat /sys/class/tty/console/active 2>/dev/null); do
    [ -c "/dev/$c" ] && set -- "$@" "/dev/$c"
  done
  if [ $# -gt 1 ]; then
    export IMGCAST_TEED=1
    /bin/sh /init </dev/console 2>&1 | tee "$@" >/dev/null
    # The script under tee ends the machine or stays in its shell; this is only a last resort.
    while true; do setsid cttyhack sh -l; done
  fi
  exec </dev/console >/dev/console 2>&1
fi

say() { echo "imgcast: $*"; }
# Seconds since the kernel started, for the lines that tell where a slow start spends its time.
uptime_s() { cut -d' ' -f1 /proc/uptime; }

# Modules the kernel asks for on its own (a filesystem at mount time) come through this loader.
echo /sbin/modprobe >/proc/sys/kernel/modprobe

SERVER=
MODE=auto
ONFAIL=shell
DONE=reboot
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    imgcast.server=*) SERVER=${arg#imgcast.server=} ;;
    imgcast.mode=*) MODE=${arg#imgcast.mode=} ;;
    imgcast.onfail=*) ONFAIL=${arg#imgcast.onfail=} ;;
    imgcast.done=*) DONE=${arg#imgcast.done=} ;;
    imgcast.boot=network) export IMGCAST_NETBOOT=1 ;;
  esac
done
case "$MODE" in auto | shell) ;; *)
  say "unknown imgcast.mode=$MODE (auto or shell): a maintenance shell instead"
  MODE=shell
  ;;
esac
case "$ONFAIL" in shell | reboot | poweroff) ;; *)
  say "unknown imgcast.onfail=$ONFAIL (shell, reboot or poweroff): shell"
  ONFAIL=shell
  ;;
esac
case "$DONE" in reboot | poweroff) ;; *)
  say "unknown imgcast.done=$DONE (reboot or poweroff): reboot"
  DONE=reboot
  ;;
esac

say "imaging environment $(cat /etc/imgcast-bootenv 2>/dev/null), kernel $(uname -r), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB of memory"

for m in $(cat /etc/imgcast-modules); do
  modprobe -q "$m" 2>/dev/null
done
if [ -d /sys/firmware/efi ]; then
  mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
fi
shell() {
  say "maintenance shell: img and the tools are on PATH; 'exit' opens a new shell, 'reboot -f' restarts"
  while true; do
    setsid cttyhack sh -l
  done
}

finish() { # $1: reboot | poweroff | shell
  sync
  case "$1" in
    reboot)
      say "restarting"
      reboot -f
      ;;
    poweroff)
      say "powering off"
      poweroff -f
      ;;
  esac
  shell
}

ip link set lo up
LINKS=
for dev in /sys/class/net/*; do
  name=${dev##*/}
  # Ethernet (type 1) with a device behind it: not lo, bridges or tunnels.
  [ "$(cat "$dev/type" 2>/dev/null)" = 1 ] && [ -e "$dev/device" ] || continue
  ip link set "$name" up
  LINKS="$LINKS $name"
done
if [ -z "$LINKS" ]; then
  say "no network card found (is its driver in the environment?)"
  [ "$MODE" = shell ] && shell
  finish "$ONFAIL"
fi
say "network: DHCP on$LINKS"
for name in $LINKS; do
  udhcpc -i "$name" -s /etc/udhcpc.script -q -n -t 8 -T 2 -A 3 -x hostname:imgcast-bootenv >/dev/null 2>&1 &
done
wait
ADDRS=$(ip -4 -o addr show scope global | awk '{print $2 " " $4}')
if [ -z "$ADDRS" ]; then
  say "no DHCP answer on$LINKS"
  [ "$MODE" = shell ] && shell
  finish "$ONFAIL"
fi
echo "$ADDRS" | while read -r line; do say "address $line ($(uptime_s) s after the kernel started)"; done

[ "$MODE" = shell ] && shell

export IMGCAST_BOOTENV=1
set -- auto
if [ -n "$SERVER" ]; then
  set -- "$@" --server "$SERVER"
  say "server $SERVER"
else
  say "no imgcast.server= on the kernel command line: img looks for the server on the network"
fi
[ "$DONE" = reboot ] && set -- "$@" --reboot
say "running: img $* ($(uptime_s) s after the kernel started)"
if img "$@"; then
  say "img finished"
  finish "$DONE"
else
  say "img failed (exit $?); see above"
  finish "$ONFAIL"
fi

#!/bin/sh
# make_demo_content.sh DIR: the seed walkthrough's inputs, from real content on this host.
#   DIR/base-os.tar   a busybox root filesystem (stands in for ubuntu:16.10)
#   DIR/cow-test/     the build context of the walkthrough (hello.sh, Dockerfile.base,
#                     Dockerfile)
#   DIR/app.tar       "COPY . /app" of that context, as a plain layer tar
#   DIR/tools.tar     another layer on the same base, for a second image
set -eu
dir="$1"
mkdir -p "$dir"
root="$dir/rootfs"
rm -rf "$root"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root" "$root/var/log"
bb=$(command -v busybox || echo /bin/busybox)
cp "$bb" "$root/bin/busybox"
for applet in sh ls cat echo cp mv rm mkdir touch id env sleep grep sed head; do
  ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'NAME="busybox demo base"\nID=busybox\n' > "$root/etc/os-release"
tar --numeric-owner --sort=name --mtime=@1700000000 -C "$root" -cf "$dir/base-os.tar" .
mkdir -p "$dir/cow-test"
printf '#!/bin/sh\necho "Hello world"\n' > "$dir/cow-test/hello.sh"
chmod +x "$dir/cow-test/hello.sh"
printf 'FROM demo/base-os:1\nCOPY . /app\n' > "$dir/cow-test/Dockerfile.base"
printf 'FROM acme/my-base-image:1.0\nCMD /app/hello.sh\n' > "$dir/cow-test/Dockerfile"
rm -rf "$dir/app-layer" && mkdir -p "$dir/app-layer/app"
cp -p "$dir/cow-test/hello.sh" "$dir/app-layer/app/"
tar --numeric-owner --sort=name --mtime=@1700000100 -C "$dir/app-layer" -cf "$dir/app.tar" app
rm -rf "$dir/tools-layer" && mkdir -p "$dir/tools-layer/usr/local/bin"
printf '#!/bin/sh\necho tools\n' > "$dir/tools-layer/usr/local/bin/tools"
chmod +x "$dir/tools-layer/usr/local/bin/tools"
tar --numeric-owner --sort=name --mtime=@1700000200 -C "$dir/tools-layer" -cf "$dir/tools.tar" usr

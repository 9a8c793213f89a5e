#!/bin/sh
# make_fixtures.sh DIR: test inputs for the strata.layers integration targets.
set -eu
dir="$1"
root="$dir/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
bb=$(command -v busybox || echo /bin/busybox)
cp "$bb" "$root/bin/busybox"
for applet in sh ls cat echo cp rm mkdir; do ln -sf busybox "$root/bin/$applet"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'NAME="strata integration busybox"' > "$root/etc/os-release"
tar --numeric-owner --sort=name --mtime=@1700000000 -C "$root" -cf "$dir/busybox.tar" .
gzip -nc "$dir/busybox.tar" > "$dir/busybox.tar.gz"
zstd -q -c "$dir/busybox.tar" > "$dir/busybox.tar.zst"
mkdir -p "$dir/app/app"
printf '#!/bin/sh\necho "Hello world"\n' > "$dir/app/app/hello.sh"
chmod +x "$dir/app/app/hello.sh"
tar --numeric-owner --sort=name --mtime=@1700000000 -C "$dir/app" -cf "$dir/app.tar" app
echo pwned > "$dir/payload"
tar -C "$dir" -P --transform 's,^payload,../../escaped,' -cf "$dir/escape.tar" payload
head -c 20000 "$dir/busybox.tar.gz" > "$dir/truncated.tar.gz"

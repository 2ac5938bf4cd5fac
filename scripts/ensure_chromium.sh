#!/usr/bin/env bash
# Make Chromium available for the browser test if we can (root + apt-get); otherwise say so —
# the browser test then skips itself with a reason. Never downloads a Playwright browser.
set -u
for exe in /usr/bin/chromium /usr/bin/chromium-browser; do
    [ -x "$exe" ] && exit 0
done
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser test (apt-get)…"
    # A fresh machine has no package lists yet: update once if the first try fails.
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/tmp/h3lab-chromium.log 2>&1 \
        || { apt-get update -q >>/tmp/h3lab-chromium.log 2>&1 \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >>/tmp/h3lab-chromium.log 2>&1; }; then
        exit 0
    fi
    echo "apt-get could not install chromium (see /tmp/h3lab-chromium.log); the browser test will skip"
else
    echo "chromium not found and cannot be installed here; the browser test will skip"
fi
exit 1

#!/bin/sh
# Installs the Dockyard data clients copied into /tmp/clients by the Dockerfile: the Python
# package always, the R package when the build context had one (images/client-r/DESCRIPTION).
set -eu
pip install --no-build-isolation '/tmp/clients/python[parquet]'
if [ -f /tmp/clients/r/DESCRIPTION ]; then
    R CMD INSTALL --no-docs --no-html --no-multiarch --library=/usr/local/lib/R/site-library \
        /tmp/clients/r
else
    echo "install-clients: no R client in the build context (images/client-r/DESCRIPTION)"
fi
rm -rf /tmp/clients /root/.cache

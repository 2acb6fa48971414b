#!/usr/bin/env bash
# Writes throw-away test certificates (EC P-256, valid one day) into DIR:
#   ca.pem ca.key            a test CA
#   server.pem server.key    server certificate signed by the CA, for
#                            DNS:localhost and IP:127.0.0.1
#   client.pem client.key    client certificate signed by the CA (mTLS)
#   rogue_ca.pem             another CA, and
#   rogue_client.pem/.key    a client certificate it signed (must be refused)
# Usage: tests/testing/make_test_certs.sh DIR (tests call it through
# tests/testing/test_certs.h)
set -euo pipefail
dir=${1:?usage: make_test_certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

ca() {  # ca NAME CN
  openssl req -x509 "${ec[@]}" -keyout "$1.key" -out "$1.pem" -days 1 \
    -subj "/CN=$2" 2>/dev/null
}
leaf() {  # leaf NAME CA SERIAL EXTFILE CN
  openssl req -new "${ec[@]}" -keyout "$1.key" -out "$1.csr" -subj "/CN=$5" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -set_serial "$3" \
    -out "$1.pem" -days 1 -extfile "$4" 2>/dev/null
  rm -f "$1.csr"
}

cat >server.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EXT
cat >client.ext <<'EXT'
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT

ca ca lockstep-test-ca
ca rogue_ca lockstep-rogue-ca
leaf server ca 1 server.ext localhost
leaf client ca 2 client.ext lockstep-test-client
leaf rogue_client rogue_ca 3 client.ext lockstep-rogue-client
rm -f server.ext client.ext
chmod 600 ./*.key

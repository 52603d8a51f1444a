#!/usr/bin/env bash
# A throwaway OpenLDAP server on loopback for the tests.
#   scripts/slapd.sh start DIR PORT   creates DIR, starts slapd, prints its URL
#   scripts/slapd.sh stop DIR         stops it (by the PID in its pid file)
# It listens on ldap://127.0.0.1:PORT (StartTLS offered) and ldaps://127.0.0.1:PORT+1,
# with a certificate from a throwaway CA (DIR/ca.pem). DIR/other-ca.pem is a second,
# unrelated CA, for tests that a certificate from the wrong CA is refused.
# Fixture: dc=example,dc=org; service account cn=reader (reader-secret); users
# uid=alice (alice-pw) and uid=bob (bob-pw) under ou=people; groupOfNames under
# ou=groups: developers (alice), ops (alice, bob).
set -euo pipefail

[ -x /usr/sbin/slapd ] || { echo "slapd.sh: slapd not found (apt-get install slapd ldap-utils)" >&2; exit 1; }

case "${1:-}" in
  start)
    dir=$(realpath -m "$2") port=$3 tls_port=$(($3 + 1))
    mkdir -p "$dir/data"

    # ECDSA P-256 keys: quick to generate, and both GnuTLS (slapd) and rustls accept them.
    ca() {
      openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
        -subj "/CN=$1" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
        -keyout "$dir/$2.key" -out "$dir/$2.pem" 2>/dev/null
    }
    ca "berth test LDAP CA" ca
    ca "unrelated test CA" other-ca
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=127.0.0.1" \
      -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    # The tests connect by IP address, so the name they check is the IP SAN.
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n') \
      -out "$dir/server.pem" 2>/dev/null

    # `allow bind_anon_dn` makes slapd accept a DN with an empty password as an
    # anonymous bind, as many directories do: the tests prove the client refuses it.
    # Anonymous callers may only bind; the reader and signed-in users may read entries,
    # nobody reads password hashes.
    cat >"$dir/slapd.conf" <<EOF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
pidfile $dir/slapd.pid
argsfile $dir/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile $dir/ca.pem
TLSCertificateFile $dir/server.pem
TLSCertificateKeyFile $dir/server.key
allow bind_anon_dn
database mdb
suffix "dc=example,dc=org"
directory $dir/data
access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by dn.exact="cn=reader,dc=example,dc=org" read
  by users read
  by * none
EOF

    hash() { /usr/sbin/slappasswd -h '{SSHA}' -s "$1"; }
    cat >"$dir/fixture.ldif" <<EOF
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: cn=reader,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: reader
userPassword: $(hash reader-secret)

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
userPassword: $(hash alice-pw)

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Example
userPassword: $(hash bob-pw)

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: cn=developers,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: developers
member: uid=alice,ou=people,dc=example,dc=org

dn: cn=ops,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: ops
member: uid=alice,ou=people,dc=example,dc=org
member: uid=bob,ou=people,dc=example,dc=org
EOF
    /usr/sbin/slapadd -q -f "$dir/slapd.conf" -l "$dir/fixture.ldif" >"$dir/slapadd.log" 2>&1 \
      || { cat "$dir/slapadd.log" >&2; exit 1; }
    /usr/sbin/slapd -f "$dir/slapd.conf" -h "ldap://127.0.0.1:$port/ ldaps://127.0.0.1:$tls_port/" \
      >"$dir/slapd.log" 2>&1 || { cat "$dir/slapd.log" >&2; exit 1; }

    # slapd detaches before it necessarily accepts connections: wait until both
    # listeners answer a (TLS-verified) request.
    for _ in $(seq 100); do
      if LDAPTLS_CACERT="$dir/ca.pem" ldapwhoami -x -H "ldaps://127.0.0.1:$tls_port" >/dev/null 2>&1 \
        && ldapwhoami -x -H "ldap://127.0.0.1:$port" >/dev/null 2>&1; then
        echo "ldap://127.0.0.1:$port"
        exit 0
      fi
      sleep 0.1
    done
    echo "slapd.sh: the server did not answer on ports $port and $tls_port" >&2
    cat "$dir/slapd.log" >&2
    exit 1
    ;;
  stop)
    dir=$2
    [ -f "$dir/slapd.pid" ] || exit 0
    pid=$(cat "$dir/slapd.pid")
    kill "$pid" 2>/dev/null || exit 0
    # slapd flushes its database on SIGTERM; wait so DIR can be removed afterwards.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
    echo "slapd.sh: slapd ($pid) did not stop" >&2
    exit 1
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac

/* tls-cert.h - the tls layer's throw-away server certificate. */
#ifndef SILLAD_TLS_CERT_H
#define SILLAD_TLS_CERT_H

#include <openssl/evp.h>
#include <openssl/x509.h>

/*
 * Makes a fresh self-signed certificate shaped like the one a Geph5 exit
 * makes at start (sillad-and-stacks.md §2.3): an ECDSA P-256 key, subject
 * CN "api.example.com" with O, OU, L, ST and C, ten random subject
 * alternative names "<random u16>.com", valid from now for 365 days, a
 * random 64-bit serial, key usage digitalSignature, extended key usage
 * serverAuth, signed with SHA-256.  Returns 0 with *cert and *key set (the
 * caller frees them), or -1 with OpenSSL's error queue saying why.
 */
int tls_selfsigned(X509 **cert, EVP_PKEY **key);

#endif

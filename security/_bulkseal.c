/* Subscriber-list rows, hashed and sealed in one call per slice (optional compiled part).
 *
 * Why C: in Python a row costs one SHA-256 call, one AES-GCM call and the concatenations
 * framing it, each a Python-level call holding the GIL (~1.2 us a row with the interpreter
 * around them); here the same work is ~0.3 us. The result must be byte for byte what the
 * Python path makes (store/set_copy.py: seal_rows, tests/security/test_bulk_seal.py checks):
 *
 *   per row:  00 02 | key_bytes (4, BE) | key | len (4, BE) | prefix | counter (4, BE) | ct | tag (16)
 *
 * where key is the first key_bytes (1-32) of SHA-256(item) (of the item itself when `digested`:
 * already a digest),
 * prefix is the version byte and salt of security/crypto.py's "s1" format, and the value is
 * AES-256-GCM under `key` (derived by the caller from the configured key and that salt) with
 * nonce 00*8 | counter, the counter being the row's index in this call. One key per call and
 * distinct counters within it: a nonce never repeats under a key. No key or plaintext is kept.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <stdint.h>
#include <string.h>

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "OpenSSL 3 is required (EVP_MD_fetch); without it the Python path is used"
#endif

#define MAX_ROWS (1 << 14)   /* security/crypto.py: _MAX_SEAL */
#define MAX_VALUE 4096       /* longer than any accepted value (emails are <= 320 characters) */
#define TAG 16
#define DIGEST 32

/* Fetched once: OpenSSL 3's one-shot SHA256() looks the algorithm up on every call (~0.45 us). */
static EVP_MD *sha256;
static EVP_CIPHER *aes_gcm;

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static PyObject *seal_rows(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer key, prefix;
    PyObject *values, *items, *out = NULL;
    int digested, key_bytes;
    EVP_CIPHER_CTX *ctx = NULL;
    EVP_MD_CTX *md = NULL;
    if (!PyArg_ParseTuple(args, "y*y*O!O!pi", &key, &prefix, &PyList_Type, &values, &PyList_Type, &items, &digested,
                          &key_bytes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values), total = 0;
    if (key.len != 32 || prefix.len > 64 || PyList_GET_SIZE(items) != n || n > MAX_ROWS || key_bytes < 1 ||
        key_bytes > DIGEST) {
        PyErr_SetString(PyExc_ValueError, "seal_rows: bad key, prefix, row count or key length");
        goto done;
    }
    /* Size the output first, checking every item (the lists are not touched by Python meanwhile:
       the GIL is held throughout). */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i), *h = PyList_GET_ITEM(items, i);
        if (!PyBytes_Check(v) || !PyBytes_Check(h) || PyBytes_GET_SIZE(v) > MAX_VALUE ||
            (digested && PyBytes_GET_SIZE(h) != DIGEST)) {
            PyErr_SetString(PyExc_ValueError, "seal_rows: values and items must be bytes (digests: 32 bytes)");
            goto done;
        }
        total += 6 + key_bytes + 4 + prefix.len + 4 + PyBytes_GET_SIZE(v) + TAG;
    }
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    ctx = EVP_CIPHER_CTX_new();
    md = EVP_MD_CTX_new();
    if (ctx == NULL || md == NULL || EVP_EncryptInit_ex2(ctx, aes_gcm, key.buf, NULL, NULL) != 1) {
        PyErr_SetString(PyExc_RuntimeError, "seal_rows: cannot set up AES-256-GCM");
        Py_CLEAR(out);
        goto done;
    }
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out), *end = p + total;
    unsigned char nonce[12] = {0}, digest[DIGEST];
    const unsigned char row_head[6] = {0, 2, 0, 0, 0, (unsigned char)key_bytes};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i), *h = PyList_GET_ITEM(items, i);
        Py_ssize_t vlen = PyBytes_GET_SIZE(v);
        int len = 0;
        memcpy(p, row_head, 6);
        p += 6;
        if (digested)
            memcpy(p, PyBytes_AS_STRING(h), (size_t)key_bytes);
        else if (EVP_DigestInit_ex2(md, sha256, NULL) != 1 ||
                 EVP_DigestUpdate(md, PyBytes_AS_STRING(h), (size_t)PyBytes_GET_SIZE(h)) != 1 ||
                 EVP_DigestFinal_ex(md, digest, NULL) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "seal_rows: SHA-256 failed");
            Py_CLEAR(out);
            goto done;
        } else
            memcpy(p, digest, (size_t)key_bytes);
        p += key_bytes;
        put32(p, (uint32_t)(prefix.len + 4 + vlen + TAG));
        p += 4;
        memcpy(p, prefix.buf, (size_t)prefix.len);
        p += prefix.len;
        put32(p, (uint32_t)i);
        put32(nonce + 8, (uint32_t)i);
        p += 4;
        /* Same key, new nonce: re-initialising with only the IV restarts GCM for this value. */
        if (EVP_EncryptInit_ex2(ctx, NULL, NULL, nonce, NULL) != 1 ||
            EVP_EncryptUpdate(ctx, p, &len, (const unsigned char *)PyBytes_AS_STRING(v), (int)vlen) != 1 ||
            len != vlen || EVP_EncryptFinal_ex(ctx, p + len, &len) != 1 || len != 0 ||
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG, p + vlen) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "seal_rows: AES-256-GCM failed");
            Py_CLEAR(out);
            goto done;
        }
        p += vlen + TAG;
    }
    if (p != end) {
        PyErr_SetString(PyExc_RuntimeError, "seal_rows: size mismatch");
        Py_CLEAR(out);
    }
done:
    EVP_CIPHER_CTX_free(ctx); /* also wipes the expanded key */
    EVP_MD_CTX_free(md);
    PyBuffer_Release(&key);
    PyBuffer_Release(&prefix);
    return out;
}

static PyMethodDef methods[] = {
    {"seal_rows", seal_rows, METH_VARARGS,
     "seal_rows(key, prefix, values, items, digested, key_bytes) -> bytes: PostgreSQL binary COPY rows "
     "(SHA-256 of item or the item as digest, cut to key_bytes; value sealed with AES-256-GCM)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "security._bulkseal", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__bulkseal(void) {
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    aes_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (sha256 == NULL || aes_gcm == NULL) {
        PyErr_SetString(PyExc_ImportError, "security._bulkseal: OpenSSL lacks SHA-256 or AES-256-GCM");
        return NULL;
    }
    return PyModule_Create(&module);
}

package org.mobilereid.core

import java.io.File
import java.security.MessageDigest

/** SHA-256 of a file, hex; the app checks a model against the digest in its sidecar before running it. */
fun sha256Hex(file: File): String {
    val md = MessageDigest.getInstance("SHA-256")
    file.inputStream().use { s ->
        val buf = ByteArray(1 shl 16)
        while (true) {
            val n = s.read(buf)
            if (n < 0) break
            md.update(buf, 0, n)
        }
    }
    return md.digest().joinToString("") { "%02x".format(it) }
}

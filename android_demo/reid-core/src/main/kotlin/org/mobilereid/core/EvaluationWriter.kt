package org.mobilereid.core

import java.io.ByteArrayOutputStream
import java.io.File
import java.io.FileOutputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.zip.ZipEntry
import java.util.zip.ZipOutputStream

/**
 * Writes the evaluation mode's results in the layout of `mobilereid/device/evaluator.py`, so the host reads phone and desktop
 * runs alike: `results/<artifact>.npz` (query, gallery, latency_ms, q_pids, g_pids, q_camids, g_camids) and then
 * `results/<artifact>.summary.json` (artifact, sha256, size, runtime, threads, host, latency). The summary is
 * written last and by rename, because the host polls for it to know the run finished; Rank-k/mAP/mINP are
 * computed by the host from the embeddings (one metric implementation for every device).
 */
class EvaluationWriter(private val outDir: File) {
    fun write(
        artifact: File,
        meta: ArtifactMetadata,
        manifest: EvaluationManifest,
        query: List<FloatArray>,
        gallery: List<FloatArray>,
        latencyMs: DoubleArray,
        threads: Int,
        warmup: Int,
        host: Map<String, Any?>,
        sha256: String,
    ): File {
        require(query.size == manifest.query.size && gallery.size == manifest.gallery.size) { "embedding count does not match the manifest" }
        outDir.mkdirs()
        val npz = File(outDir, "${artifact.name}.npz")
        val arrays = linkedMapOf(
            "query" to Npy.float32(query), "gallery" to Npy.float32(gallery), "latency_ms" to Npy.float64(latencyMs),
            "q_pids" to Npy.int64(manifest.query.map { it.pid }), "g_pids" to Npy.int64(manifest.gallery.map { it.pid }),
            "q_camids" to Npy.int64(manifest.query.map { it.camid }), "g_camids" to Npy.int64(manifest.gallery.map { it.camid }),
        )
        atomicWrite(npz) { Npy.writeNpz(it, arrays) }
        val stats = LatencyStats().also { s -> latencyMs.forEach { s.add(it) } }
        val summary = linkedMapOf<String, Any?>(
            "artifact" to artifact.name, "sha256" to sha256, "size_bytes" to artifact.length(),
            "target" to meta.target, "runtime" to meta.runtime, "precision" to meta.precision,
            "threads" to threads, "warmup" to warmup, "host" to host, "latency" to stats.summary(),
        )
        val out = File(outDir, "${artifact.name}.summary.json")
        atomicWrite(out) { it.write(Json.write(summary).toByteArray()) }
        return out
    }

    private fun atomicWrite(target: File, body: (FileOutputStream) -> Unit) {
        val tmp = File(target.parentFile, ".${target.name}.tmp")
        FileOutputStream(tmp).use(body)
        if (!tmp.renameTo(target)) {
            tmp.delete()
            throw java.io.IOException("$target: could not move the finished file into place")
        }
    }
}

/** NumPy `.npy` (format 1.0) arrays and `.npz` archives, as `numpy.lib.format` defines them. */
object Npy {
    class Array(val descr: String, val shape: IntArray, val data: ByteArray)

    fun float32(rows: List<FloatArray>): Array {
        val d = rows.firstOrNull()?.size ?: 0
        val buf = le(rows.size * d * 4)
        for (r in rows) {
            require(r.size == d) { "rows differ in length" }
            for (v in r) buf.putFloat(v)
        }
        return Array("<f4", intArrayOf(rows.size, d), buf.array())
    }

    fun float64(v: DoubleArray): Array {
        val buf = le(v.size * 8)
        v.forEach { buf.putDouble(it) }
        return Array("<f8", intArrayOf(v.size), buf.array())
    }

    fun int64(v: List<Int>): Array {
        val buf = le(v.size * 8)
        v.forEach { buf.putLong(it.toLong()) }
        return Array("<i8", intArrayOf(v.size), buf.array())
    }

    fun npy(a: Array): ByteArray {
        val shape = when (a.shape.size) {
            1 -> "(${a.shape[0]},)"
            else -> a.shape.joinToString(", ", "(", ")")
        }
        var header = "{'descr': '${a.descr}', 'fortran_order': False, 'shape': $shape, }"
        val unpadded = 10 + header.length + 1  // magic(6) + version(2) + header length(2) + header + '\n'
        header += " ".repeat((64 - unpadded % 64) % 64) + "\n"
        val out = ByteArrayOutputStream()
        out.write(byteArrayOf(0x93.toByte(), 'N'.code.toByte(), 'U'.code.toByte(), 'M'.code.toByte(), 'P'.code.toByte(), 'Y'.code.toByte(), 1, 0))
        out.write(header.length and 0xFF)
        out.write(header.length shr 8)
        out.write(header.toByteArray(Charsets.US_ASCII))
        out.write(a.data)
        return out.toByteArray()
    }

    fun writeNpz(stream: java.io.OutputStream, arrays: Map<String, Array>) {
        ZipOutputStream(stream).use { zip ->
            for ((name, a) in arrays) {
                zip.putNextEntry(ZipEntry("$name.npy"))
                zip.write(npy(a))
                zip.closeEntry()
            }
        }
    }

    private fun le(n: Int): ByteBuffer = ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN)
}

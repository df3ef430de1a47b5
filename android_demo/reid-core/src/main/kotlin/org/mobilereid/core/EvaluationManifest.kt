package org.mobilereid.core

import java.io.File

/** One image of the evaluation set: a path relative to the data folder, its person id and 0-based camera id. */
data class EvalImage(val file: String, val pid: Int, val camid: Int)

/**
 * The evaluation set pushed by `mobilereid evaluate --device adb`: `data/manifest.json`, written by the host from
 * its own dataset reader, so the phone uses exactly the query/gallery split and labels the host scores with (junk
 * and distractor conventions stay on the host, in one place):
 *
 * ```
 * {"format": "mobilereid-eval-manifest", "format_version": 1,
 *  "query":   [{"file": "query/0001_c1s1_000151_01.jpg", "pid": 1, "camid": 0}, ...],
 *  "gallery": [{"file": "bounding_box_test/...", "pid": 1, "camid": 1}, ...]}
 * ```
 */
data class EvaluationManifest(val root: File, val query: List<EvalImage>, val gallery: List<EvalImage>) {
    companion object {
        const val FORMAT = "mobilereid-eval-manifest"
        const val FILE_NAME = "manifest.json"

        fun read(dataDir: File): EvaluationManifest {
            val f = File(dataDir, FILE_NAME)
            if (!f.isFile) throw IllegalArgumentException("$f: evaluation manifest not found")
            val root = try {
                Json.parse(f.readText())
            } catch (e: IllegalArgumentException) {
                throw IllegalArgumentException("$f: ${e.message}")
            }
            @Suppress("UNCHECKED_CAST")
            val m = root as? Map<String, Any?> ?: throw IllegalArgumentException("$f: not a JSON object")
            if (m["format"] != FORMAT) throw IllegalArgumentException("$f: format is ${m["format"]}, expected $FORMAT")
            fun split(name: String): List<EvalImage> = try {
                m.list(name).map { item ->
                    @Suppress("UNCHECKED_CAST")
                    val e = item as? Map<String, Any?> ?: throw IllegalArgumentException("an entry of '$name' is not an object")
                    val file = e.str("file")
                    if (file.startsWith("/") || file.split('/').contains("..")) throw IllegalArgumentException("'$file' leaves the data folder")
                    EvalImage(file, e.int("pid"), e.int("camid"))
                }
            } catch (e: IllegalArgumentException) {
                throw IllegalArgumentException("$f: ${e.message}")
            }
            val q = split("query")
            val g = split("gallery")
            if (q.isEmpty() || g.isEmpty()) throw IllegalArgumentException("$f: query and gallery must both hold images")
            for (img in q + g) {
                if (!File(dataDir, img.file).isFile) throw IllegalArgumentException("${File(dataDir, img.file)}: listed in the manifest but missing")
            }
            return EvaluationManifest(dataDir, q, g)
        }
    }
}

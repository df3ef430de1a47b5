package org.mobilereid.demo

import android.content.Context
import org.mobilereid.core.ArtifactMetadata
import org.mobilereid.core.sha256Hex
import java.io.File

/** A bundled model: the artifact copied to the app's files folder, and its parsed sidecar. */
data class BundledModel(val file: File, val metadata: ArtifactMetadata) {
    override fun toString(): String = "${file.name} (${metadata.runtime}, ${metadata.precision})"
}

/**
 * The `.tflite` and `.pte` files bundled in `assets/models/`, each with its `<name>.json` sidecar. They are copied
 * once into `files/models/` (ExecuTorch and LiteRT both want a file path) and their SHA-256 is checked against the
 * sidecar, so a stale sidecar next to a re-exported model is caught instead of silently mis-preprocessing.
 */
object ModelStore {
    private const val ASSET_DIR = "models"

    fun bundled(context: Context): List<BundledModel> {
        val names = context.assets.list(ASSET_DIR)?.toSet() ?: emptySet()
        val dir = File(context.filesDir, ASSET_DIR).apply { mkdirs() }
        return names.filter { (it.endsWith(".tflite") || it.endsWith(".pte")) && "$it.json" in names }.sorted().map { name ->
            val meta = ArtifactMetadata.parse(context.assets.open("$ASSET_DIR/$name.json").bufferedReader().use { it.readText() }, "$name.json")
            val file = File(dir, name)
            if (!file.isFile || file.length() == 0L) {
                val tmp = File(dir, ".$name.tmp")
                context.assets.open("$ASSET_DIR/$name").use { src -> tmp.outputStream().use { src.copyTo(it) } }
                check(tmp.renameTo(file)) { "could not store $name" }
            }
            verified(file, meta)
        }
    }

    /** Loads a model pushed next to its sidecar (evaluation mode); checks the digest like [bundled]. */
    fun pushed(file: File): BundledModel {
        if (!file.isFile) throw IllegalArgumentException("$file: model not found")
        return verified(file, ArtifactMetadata.read(ArtifactMetadata.sidecarFor(file)))
    }

    private fun verified(file: File, meta: ArtifactMetadata): BundledModel {
        if (meta.sha256.isNotEmpty()) {
            val digest = sha256Hex(file)
            require(digest == meta.sha256) { "${file.name}: SHA-256 $digest does not match its sidecar (${meta.sha256}); re-export both" }
        }
        return BundledModel(file, meta)
    }
}

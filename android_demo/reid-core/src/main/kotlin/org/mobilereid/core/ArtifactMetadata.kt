package org.mobilereid.core

import java.io.File

/** Affine quantization of a tensor: real = (q - zeroPoint) * scale. */
data class Quantization(val scale: Float, val zeroPoint: Int)

/** One model input or output as the exporter describes it. */
data class TensorSpec(
    val name: String,
    val shape: List<Int>,
    val dtype: String,
    val layout: String?,
    val quantization: Quantization?,
) {
    val elementCount: Int get() = shape.fold(1) { a, b -> a * b }
}

/**
 * The preprocessing an artifact expects (the `preprocess` block of the sidecar, written by
 * `mobilereid.data.preprocess.PreprocessSpec`): target size, colour order, normalisation.
 * Values are narrowed to Float exactly as numpy narrows them (`np.float32(x)`), so results match bit for bit.
 */
data class PreprocessSpec(
    val height: Int,
    val width: Int,
    val mean: FloatArray,
    val std: FloatArray,
    val scale: Float,
    val colourOrder: String,
    val resize: String,
) {
    init {
        require(mean.size == 3 && std.size == 3) { "mean and std need three values" }
        require(colourOrder == "RGB" || colourOrder == "BGR") { "colour order '$colourOrder' is neither RGB nor BGR" }
        require(resize == SUPPORTED_RESIZE) { "resize '$resize' is not supported (only $SUPPORTED_RESIZE)" }
    }

    companion object {
        const val SUPPORTED_RESIZE = "bilinear_half_pixel_no_antialias"

        fun fromJson(m: Map<String, Any?>) = PreprocessSpec(
            height = m.int("height"),
            width = m.int("width"),
            mean = m.list("mean").map { (it as Number).toFloat() }.toFloatArray(),
            std = m.list("std").map { (it as Number).toFloat() }.toFloatArray(),
            scale = m.num("scale").toFloat(),
            colourOrder = (m["colour_order"] as? String) ?: "RGB",
            resize = (m["resize"] as? String) ?: SUPPORTED_RESIZE,
        )
    }
}

/** The `camera` block of a sidecar: SIE cameras of the model and the camera baked into the artifact (null: none). */
data class CameraSpec(val cameras: Int, val bakedCamera: Int?) {
    init {
        require(cameras > 0) { "camera.cameras must be > 0" }
        require(bakedCamera == null || bakedCamera in 0 until cameras) { "camera.baked_camera $bakedCamera is outside 0..${cameras - 1}" }
    }
}

/**
 * The `match` block `mobilereid evaluate --write-threshold` adds to a sidecar: the same-person cosine threshold
 * calibrated for this artifact at false accept rate [far] (fitted on half of the evaluation identities, measured on
 * the other half), and the sha256 of the artifact it was calibrated for. INT8 shifts the score distribution, so an
 * artifact's own threshold replaces a hand-set one.
 */
data class MatchSpec(
    val threshold: Double,
    val far: Double,
    val artifactSha256: String,
    val gallery: GalleryFormat = GalleryFormat.Float32,
) {
    init {
        require(threshold in -1.0..1.0) { "match.threshold $threshold is not a cosine similarity in [-1, 1]" }
        require(far > 0.0 && far < 1.0) { "match.far $far is outside (0, 1)" }
    }
}

/**
 * The metadata sidecar (`<artifact>.json`) that `mobilereid export` writes beside every artifact: which runtime
 * runs it, its input/output tensors (layout NCHW or NHWC, float or int8/uint8 with scale and zero point), the
 * preprocessing, and the embedding size. The app never guesses any of these.
 */
data class ArtifactMetadata(
    val artifact: String,
    val sha256: String,
    val target: String,
    val runtime: String,
    val precision: String,
    val embeddingDim: Int,
    val preprocess: PreprocessSpec,
    val input: TensorSpec,
    val output: TensorSpec,
    /** Models with a camera embedding (TransReID SIE): how many cameras it knows and which one's embedding is baked
     *  into this artifact (it has no camera input; frames from any camera are embedded as if seen by that one). */
    val camera: CameraSpec? = null,
    /** The calibrated same-person threshold, when the artifact was evaluated with `--write-threshold`. */
    val match: MatchSpec? = null,
) {
    val layout: String get() = input.layout ?: "NCHW"

    /** The threshold the matcher starts from: the stored format's own (binary and PCA galleries score on scales of
     *  their own), else the artifact's calibrated one, else [fallback] (a hand-set value). */
    fun defaultThreshold(fallback: Double = 0.6): Double = match?.gallery?.ownThreshold ?: match?.threshold ?: fallback

    /** How the gallery stores templates: the sidecar's `match.gallery`, else float32. */
    fun galleryFormat(): GalleryFormat = match?.gallery ?: GalleryFormat.Float32

    companion object {
        const val FORMAT = "mobilereid-artifact"

        fun parse(text: String, source: String = "sidecar"): ArtifactMetadata {
            val root = try {
                Json.parse(text) as? Map<*, *> ?: throw IllegalArgumentException("not a JSON object")
            } catch (e: IllegalArgumentException) {
                throw IllegalArgumentException("$source: ${e.message}")
            }
            @Suppress("UNCHECKED_CAST")
            val m = root as Map<String, Any?>
            try {
                if (m["format"] != FORMAT) throw IllegalArgumentException("format is ${m["format"]}, expected $FORMAT")
                val input = tensor(m.obj("input"))
                if (input.layout != null && input.layout != "NCHW" && input.layout != "NHWC") {
                    throw IllegalArgumentException("input layout '${input.layout}' is neither NCHW nor NHWC")
                }
                if (input.dtype !in setOf("float32", "int8", "uint8")) throw IllegalArgumentException("input dtype '${input.dtype}' is not supported")
                return ArtifactMetadata(
                    artifact = m.str("artifact"), sha256 = (m["sha256"] as? String) ?: "",
                    target = m.str("target"), runtime = m.str("runtime"), precision = m.str("precision"),
                    embeddingDim = m.obj("model").int("embedding_dim"),
                    preprocess = PreprocessSpec.fromJson(m.obj("preprocess")),
                    input = input, output = tensor(m.obj("output")),
                    camera = m.objOrNull("camera")?.let { CameraSpec(it.int("cameras"), (it["baked_camera"] as? Number)?.toInt()) },
                    match = m.objOrNull("match")?.let { matchSpec(it, (m["sha256"] as? String) ?: "") },
                ).also { meta ->
                    val pca = meta.match?.gallery as? GalleryFormat.Pca
                    if (pca != null && pca.mean.size != meta.embeddingDim) {
                        throw IllegalArgumentException("match.gallery projects ${pca.mean.size} values, the model embeds ${meta.embeddingDim}")
                    }
                }
            } catch (e: IllegalArgumentException) {
                throw IllegalArgumentException("$source: ${e.message}")
            }
        }

        fun read(file: File): ArtifactMetadata {
            if (!file.isFile) throw IllegalArgumentException("$file: metadata sidecar not found")
            return parse(file.readText(), file.path)
        }

        /** `model.tflite` -> `model.tflite.json`, the exporter's naming. */
        fun sidecarFor(artifact: File): File = File(artifact.path + ".json")

        /** A `match` block, refused when it was calibrated for another artifact (its sha256 differs). */
        private fun matchSpec(m: Map<String, Any?>, artifactSha256: String): MatchSpec {
            val spec = MatchSpec(m.num("threshold"), m.num("far"), m.str("artifact_sha256"), galleryFormat(m.objOrNull("gallery")))
            if (artifactSha256.isNotEmpty() && spec.artifactSha256 != artifactSha256) {
                throw IllegalArgumentException(
                    "match.threshold was calibrated for another artifact (sha256 ${spec.artifactSha256.take(12)}..., " +
                        "this one ${artifactSha256.take(12)}...)"
                )
            }
            return spec
        }

        private fun galleryFormat(g: Map<String, Any?>?): GalleryFormat = when (val f = g?.get("format") ?: "float32") {
            "float32" -> GalleryFormat.Float32
            "float16" -> GalleryFormat.Float16
            "int8" -> GalleryFormat.Int8(g!!.num("scale").toFloat())
            "binary" -> GalleryFormat.Binary(g!!.num("threshold"))
            else -> if (f is String && Regex("pca[1-9][0-9]*").matches(f)) pcaFormat(f, g!!)
                else throw IllegalArgumentException("match.gallery.format '$f' is not one the app stores (float32, float16, int8, binary, pcaK)")
        }

        private fun pcaFormat(name: String, g: Map<String, Any?>): GalleryFormat.Pca {
            fun floats(v: Any?) = (v as? List<*>)?.map { (it as? Number)?.toFloat() ?: throw IllegalArgumentException("match.gallery: a value is not a number") }?.toFloatArray()
                ?: throw IllegalArgumentException("match.gallery: expected a list of numbers")
            val components = g.list("components").map { floats(it) }.toTypedArray()
            val pca = GalleryFormat.Pca(floats(g["mean"]), components, g.num("threshold"))
            if (pca.name != name) throw IllegalArgumentException("match.gallery.format is $name but it holds ${components.size} components")
            return pca
        }

        private fun tensor(m: Map<String, Any?>): TensorSpec {
            val q = m.objOrNull("quantization")
            return TensorSpec(
                name = (m["name"] as? String) ?: "",
                shape = m.list("shape").map { (it as Number).toInt() },
                dtype = m.str("dtype"),
                layout = m["layout"] as? String,
                quantization = q?.let { Quantization(it.num("scale").toFloat(), it.int("zero_point")) },
            )
        }
    }
}

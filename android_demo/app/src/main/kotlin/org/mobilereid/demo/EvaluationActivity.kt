package org.mobilereid.demo

import android.app.Activity
import android.os.Build
import android.os.Bundle
import android.widget.TextView
import org.mobilereid.core.EvaluationManifest
import org.mobilereid.core.EvaluationRun
import org.mobilereid.core.EvaluationWriter
import org.mobilereid.core.sha256Hex
import java.io.File

/**
 * Evaluation mode, started by `mobilereid evaluate --device adb`:
 *
 *     adb shell am start -W -n org.mobilereid.demo/.EvaluationActivity \
 *         --es model model_int8.tflite --es data data --ei threads 4 [--ei warmup 3]
 *
 * Everything lives in the app's external files folder `eval/` (`/sdcard/Android/data/org.mobilereid.demo/files/
 * eval/`), where the host pushed the model, its sidecar and `data/` (images + `manifest.json`). The run embeds
 * every manifest image with the model's runtime (the same loop as `mobilereid/device/evaluator.py`) and writes
 * `results/<model>.npz` and then `results/<model>.summary.json`; on failure it writes `results/<model>.error.txt`
 * with a one-line reason instead. The host polls for either file, pulls `results/` and computes Rank-k/mAP/mINP.
 * Names from the extras are plain file names inside that folder; anything with a path separator is refused.
 */
class EvaluationActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val status = TextView(this).apply { textSize = 18f; setPadding(32, 32, 32, 32) }
        setContentView(status)
        val modelName = intent.getStringExtra("model") ?: ""
        val dataName = intent.getStringExtra("data") ?: "data"
        val threads = intent.getIntExtra("threads", 4)
        val warmup = intent.getIntExtra("warmup", 3)
        val base = File(getExternalFilesDir(null), "eval")
        val results = File(base, "results")
        Thread {
            try {
                for (n in listOf(modelName, dataName)) require(n.isNotEmpty() && '/' !in n && n != "..") { "bad name '$n' in the intent extras" }
                val model = ModelStore.pushed(File(base, modelName))
                val manifest = EvaluationManifest.read(File(base, dataName))
                val out = openEmbedder(model.file, model.metadata, threads).use { embedder ->
                    EvaluationRun(embedder, FrameConversion::decodeFile).run(manifest, warmup) { done, total ->
                        if (done % 50 == 0 || done == total) runOnUiThread { status.text = "$modelName: $done / $total images" }
                    }
                }
                val host = mapOf("machine" to Build.SUPPORTED_ABIS.firstOrNull(), "system" to "Android ${Build.VERSION.RELEASE}",
                    "device" to "${Build.MANUFACTURER} ${Build.MODEL}", "soc" to (if (Build.VERSION.SDK_INT >= 31) Build.SOC_MODEL else null),
                    "cpus" to Runtime.getRuntime().availableProcessors())
                EvaluationWriter(results).write(model.file, model.metadata, manifest, out.query, out.gallery, out.latencyMs,
                    threads, warmup, host, sha256Hex(model.file))
                runOnUiThread { status.text = "$modelName: done" }
            } catch (e: Throwable) {
                results.mkdirs()
                val reason = (e.message ?: e.toString()).lineSequence().first()
                File(results, ".$modelName.error.tmp").apply { writeText(reason) }.renameTo(File(results, "$modelName.error.txt"))
                runOnUiThread { status.text = "$modelName: $reason" }
            }
            runOnUiThread { finish() }
        }.start()
    }
}

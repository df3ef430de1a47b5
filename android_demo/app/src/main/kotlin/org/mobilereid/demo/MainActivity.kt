package org.mobilereid.demo

import android.Manifest
import android.content.pm.PackageManager
import android.os.Bundle
import android.os.SystemClock
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.SeekBar
import android.widget.Spinner
import android.widget.Toast
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.camera.view.PreviewView
import androidx.core.content.ContextCompat
import org.mobilereid.core.Embedder
import org.mobilereid.core.Gallery
import org.mobilereid.core.LatencyStats
import org.mobilereid.core.Preprocessor
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicReference

/**
 * The live demo: CameraX preview and analysis, the person box, a picker over the bundled `.tflite` and `.pte`
 * models, Enrol (the next frame's embedding is added to the typed name), Forget all, a similarity threshold, and an
 * overlay with the matched identity, its cosine similarity and the model's latency (last and p50 of the last 30).
 * All inference runs on one analysis thread; switching models closes the old runtime on that thread.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var overlay: CropOverlayView
    private lateinit var previewView: PreviewView
    private val analysisThread: ExecutorService = Executors.newSingleThreadExecutor()
    private val pendingModel = AtomicReference<BundledModel?>(null)
    private val pendingEnrol = AtomicReference<String?>(null)
    private var embedder: Embedder? = null
    private var preprocessor: Preprocessor? = null
    private var gallery: Gallery? = null
    private val latency = LatencyStats(window = 30)
    @Volatile private var threshold = 0.6

    private val cameraPermission = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else Toast.makeText(this, R.string.camera_denied, Toast.LENGTH_LONG).show()
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        overlay = findViewById(R.id.overlay)
        previewView = findViewById(R.id.preview)

        val models = try {
            ModelStore.bundled(this)
        } catch (e: IllegalArgumentException) {
            overlay.showResult(listOf(e.message ?: "bad model"), false)
            emptyList()
        }
        if (models.isEmpty()) overlay.showResult(listOf(getString(R.string.no_models)), false)
        val picker = findViewById<Spinner>(R.id.model_picker)
        picker.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, models)
        picker.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) {
                pendingModel.set(models[position])
            }
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
        findViewById<Button>(R.id.enrol).setOnClickListener {
            val name = findViewById<EditText>(R.id.name).text.toString().trim()
            if (name.isEmpty()) Toast.makeText(this, R.string.name_hint, Toast.LENGTH_SHORT).show() else pendingEnrol.set(name)
        }
        findViewById<Button>(R.id.forget).setOnClickListener { analysisThread.execute { gallery?.clear() } }
        findViewById<SeekBar>(R.id.threshold).setOnSeekBarChangeListener(object : SeekBar.OnSeekBarChangeListener {
            override fun onProgressChanged(seekBar: SeekBar?, progress: Int, fromUser: Boolean) { threshold = progress / 100.0 }
            override fun onStartTrackingTouch(seekBar: SeekBar?) {}
            override fun onStopTrackingTouch(seekBar: SeekBar?) {}
        })

        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) startCamera()
        else cameraPermission.launch(Manifest.permission.CAMERA)
    }

    private fun startCamera() {
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            val preview = Preview.Builder().build().also { it.setSurfaceProvider(previewView.surfaceProvider) }
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            analysis.setAnalyzer(analysisThread) { frame -> frame.use { analyse(it) } }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    /** Runs on the analysis thread. */
    private fun analyse(frame: ImageProxy) {
        pendingModel.getAndSet(null)?.let { switchModel(it) }
        val model = embedder ?: return
        val pre = preprocessor ?: return
        val image = FrameConversion.upright(frame)
        overlay.setFrameSize(image.width, image.height)
        val input = pre.prepare(image.pixels, image.width, image.height, overlay.cropFor(image.width, image.height))
        val t0 = SystemClock.elapsedRealtimeNanos()
        val embedding = model.embed(input)
        val ms = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
        latency.add(ms)
        val g = gallery ?: return
        pendingEnrol.getAndSet(null)?.let { name ->
            g.enrol(name, embedding)
            runOnUiThread { Toast.makeText(this, "enrolled $name (${g.viewCount(name)} views)", Toast.LENGTH_SHORT).show() }
        }
        val r = g.match(embedding, threshold)
        val who = when {
            r.bestIdentity == null -> "gallery empty: enrol someone"
            r.matched -> "${r.identity}  (cos %.2f)".format(r.similarity)
            else -> "unknown  (best ${r.bestIdentity}, cos %.2f < %.2f)".format(r.similarity, threshold)
        }
        overlay.showResult(listOf(who, "%s  %.1f ms  (p50 %.1f ms)".format(model.metadata.precision, ms, latency.percentile(50.0))), r.matched)
    }

    /** Runs on the analysis thread: the gallery is per model, since embeddings of different models do not compare. */
    private fun switchModel(m: BundledModel) {
        embedder?.close()
        embedder = null
        try {
            embedder = openEmbedder(m.file, m.metadata, threads = 4)
            preprocessor = Preprocessor(m.metadata)
            gallery = Gallery(m.metadata.embeddingDim, m.metadata.galleryFormat())  // the sidecar's stored format
            overlay.modelAspect = m.metadata.preprocess.height / m.metadata.preprocess.width.toFloat()
            threshold = m.metadata.defaultThreshold()  // the artifact's calibrated threshold; the slider overrides it
            runOnUiThread { findViewById<SeekBar>(R.id.threshold).progress = (threshold * 100).toInt() }
        } catch (e: Exception) {
            overlay.showResult(listOf("${m.file.name}: ${e.message}"), false)
        }
    }

    override fun onDestroy() {
        analysisThread.execute { embedder?.close() }
        analysisThread.shutdown()
        super.onDestroy()
    }
}

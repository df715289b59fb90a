// Runs many real Liquibase commands in one JVM (a JVM start costs seconds; the conformance
// suite runs hundreds of commands). Liquibase's own API, as its CLI calls it: a
// CommandScope per command, a SearchPathResourceAccessor per search path.
//
// usage: java -cp <liquibase jars> LiquibaseBatch.java JOBS RESULTS THREADS
//   JOBS     one job per line, tab-separated:
//            key, command (update | validate | status), search path, changelog file, JDBC URL,
//            user, password, contexts (may be empty)
//   RESULTS  written line by line as jobs end: key, "ok" or "fail", the error (one line)
//   THREADS  how many jobs run at once (each on its own database)
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.logging.Level;
import java.util.logging.LogManager;

import liquibase.Scope;
import liquibase.command.CommandScope;
import liquibase.resource.SearchPathResourceAccessor;
import liquibase.ui.LoggerUIService;

public class LiquibaseBatch {
    public static void main(String[] args) throws Exception {
        LogManager.getLogManager().reset();
        java.util.logging.Logger.getLogger("").setLevel(Level.OFF);
        List<String[]> jobs = new ArrayList<>();
        for (String line : Files.readAllLines(Paths.get(args[0]), StandardCharsets.UTF_8)) {
            if (!line.isEmpty()) {
                jobs.add(line.split("\t", -1));
            }
        }
        int threads = Integer.parseInt(args[2]);
        try (PrintWriter out = new PrintWriter(Files.newBufferedWriter(Paths.get(args[1]), StandardCharsets.UTF_8), true)) {
            ExecutorService pool = Executors.newFixedThreadPool(threads);
            for (String[] job : jobs) {
                pool.submit(() -> {
                    String result;
                    try {
                        run(job);
                        result = job[0] + "\tok\t";
                    } catch (Throwable e) {
                        StringBuilder msg = new StringBuilder();
                        for (Throwable t = e; t != null; t = t.getCause()) {
                            msg.append(t.getClass().getSimpleName()).append(": ").append(t.getMessage()).append(" | ");
                        }
                        result = job[0] + "\tfail\t" + msg.toString().replaceAll("[\\r\\n\\t]+", " ");
                    }
                    synchronized (out) {
                        out.println(result);
                    }
                });
            }
            pool.shutdown();
            pool.awaitTermination(1, TimeUnit.HOURS);
        }
        System.exit(0);
    }

    static void run(String[] job) throws Exception {
        String command = job[1];
        Map<String, Object> scope = new HashMap<>();
        scope.put(Scope.Attr.resourceAccessor.name(), new SearchPathResourceAccessor(job[2]));
        scope.put(Scope.Attr.ui.name(), new LoggerUIService());
        Scope.child(scope, () -> {
            CommandScope c = new CommandScope(command);
            c.addArgumentValue("changelogFile", job[3]);
            c.addArgumentValue("url", job[4]);
            c.addArgumentValue("username", job[5]);
            c.addArgumentValue("password", job[6]);
            if (job.length > 7 && !job[7].isEmpty()) {
                c.addArgumentValue("contexts", job[7]);
            }
            c.setOutput(new ByteArrayOutputStream());
            c.execute();
        });
    }
}

package io.sparkmlext.delta;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.util.Arrays;
import java.util.Iterator;

import io.delta.storage.HadoopFileSystemLogStore;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FSDataOutputStreamBuilder;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.s3a.RemoteFileChangedException;

/**
 * A Delta log store for S3 that several Spark applications may commit through at once.
 *
 * <p>Delta needs each commit file ({@code _delta_log/N.json}) to be created by exactly one
 * writer. Delta's default S3 log store ensures that only inside one JVM (a lock); its
 * multi-cluster store coordinates through a DynamoDB table. S3 can now say it alone: a PUT
 * with {@code If-None-Match: *} is refused (HTTP 412) when the key exists, and Hadoop's S3A
 * (3.4.2 and later) sends it for a file created with the option
 * {@code fs.option.create.conditional.overwrite}. The refused writer gets a
 * {@link FileAlreadyExistsException}, which Delta answers as for any concurrent commit: it
 * reads the winner's commit, checks for conflicts and retries at the next version.
 *
 * <p>The option is mandatory ({@code must}), so a store or connector that cannot write
 * conditionally fails the commit instead of overwriting another writer's. An object is
 * visible only once its upload completes, so a partial commit file is never read.
 *
 * <p>A 412 can also answer this writer's own upload: S3 stored it, the reply was lost, and
 * the connector's retry found the key taken. Delta would then take its own commit for a
 * rival's and commit the same actions again at the next version. So a refused writer reads
 * the object back, and a byte-equal object is its own commit (Delta's commitInfo carries a
 * fresh txnId, so another writer's commit never has the same bytes).
 */
public class ConditionalPutS3LogStore extends HadoopFileSystemLogStore {

    /** Hadoop's create option for "fail if the object exists, decided by the store". */
    public static final String CONDITIONAL_CREATE = "fs.option.create.conditional.overwrite";

    public ConditionalPutS3LogStore(Configuration hadoopConf) {
        super(hadoopConf);
    }

    @Override
    public void write(Path path, Iterator<String> actions, Boolean overwrite, Configuration hadoopConf)
            throws IOException {
        FileSystem fs = path.getFileSystem(hadoopConf);
        if (!overwrite && fs.exists(path)) {
            throw new FileAlreadyExistsException(path.toString());
        }
        @SuppressWarnings("rawtypes")  // FileSystem.createFile returns the raw builder type
        FSDataOutputStreamBuilder create = fs.createFile(path).overwrite(overwrite).recursive();
        if (!overwrite) {
            create.must(CONDITIONAL_CREATE, true);
        }
        byte[] commit = joined(actions);
        try (FSDataOutputStream out = create.build()) {
            out.write(commit);
        } catch (RemoteFileChangedException refused) {  // S3A's name for a 412 on the final PUT
            if (overwrite) {
                throw refused;
            }
            if (Arrays.equals(readBack(fs, path, refused), commit)) {
                return;  // our own upload: S3 stored it, and its reply was lost
            }
            FileAlreadyExistsException taken = new FileAlreadyExistsException(path.toString());
            taken.initCause(refused);
            throw taken;
        }
    }

    private static byte[] joined(Iterator<String> actions) {
        StringBuilder lines = new StringBuilder();
        while (actions.hasNext()) {
            lines.append(actions.next()).append('\n');
        }
        return lines.toString().getBytes(StandardCharsets.UTF_8);
    }

    /** The object that refused our upload; if it cannot be read, whose commit it is stays unknown. */
    private static byte[] readBack(FileSystem fs, Path path, IOException refused) throws IOException {
        try (InputStream in = fs.open(path)) {
            return in.readAllBytes();
        } catch (IOException unread) {
            IOException unknown = new IOException(
                    path + ": S3 refused the commit, and the object there could not be read to tell whose it is",
                    unread);
            unknown.addSuppressed(refused);
            throw unknown;
        }
    }

    @Override
    public Boolean isPartialWriteVisible(Path path, Configuration hadoopConf) {
        return false;
    }
}
